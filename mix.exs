# The compiler step that builds the NIF (`compilers:` below). Loaded here, not
# compiled from lib/, so it exists before this project compiles, also when
# this project is a dependency of another one.
Code.require_file("mix/tasks/compile.vsmcp_crdt_nif.ex", __DIR__)

defmodule VsmcpCrdt.MixProject do
  use Mix.Project

  def project do
    [
      app: :vsmcp_crdt,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:vsmcp_crdt_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  def application do
    [
      mod: {Vsmcp.CRDT.Application, []},
      extra_applications: [:logger, :crypto]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # Both are optional integrations: users get them from Hex. Our own build
  # machines cannot reach Hex, so there they resolve to the vendored copies in
  # ../shared/vendor (see STYLE.md, "Optional dependencies").
  defp deps do
    [
      optional_dep(:phoenix_pubsub, "~> 2.1"),
      optional_dep(:telemetry, "~> 1.2")
    ]
  end

  defp optional_dep(name, requirement) do
    vendored = Path.expand("../shared/vendor/#{name}", __DIR__)

    if File.dir?(vendored) do
      {name, path: vendored, optional: true}
    else
      {name, requirement, optional: true}
    end
  end
end
