defmodule Vsmcp.CRDT.HostProjectTest do
  @moduledoc """
  Uses this repository the way a user does: as a `path:` dependency of a
  fresh Mix project, which must compile our NIF through the compiler step in
  our `mix.exs` and be able to call it.

  The host project lives in its own temporary directory with its own `_build`
  and `deps`; the only thing it writes into this repository is the installed
  `priv/native/libvsmcp_crdt_nif.so` (git-ignored), which is the same file our
  own compile produces. Cargo reuses `CARGO_TARGET_DIR` from the environment,
  so the Rust build is incremental.
  """

  use ExUnit.Case, async: true

  @moduletag :host_project

  @repo_dir Path.expand("../../..", __DIR__)

  # The expression the host project evaluates, and what it must print.
  # Change these two lines when the public API exists.
  @host_expression "Vsmcp.CRDT.Native.nif_loaded()"
  @expected_output "true"

  setup do
    dir = Path.join(System.tmp_dir!(), "vsmcp_crdt_host_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  @tag timeout: 600_000
  test "a Mix project depending on vsmcp_crdt by path compiles and calls the NIF", %{dir: dir} do
    write_host_project(dir)

    {output, status} = mix(dir, ["compile"])
    assert status == 0, "host `mix compile` failed:\n#{output}"

    {output, status} = mix(dir, ["run", "-e", "IO.puts(HostApp.check())"])
    assert status == 0, "host `mix run` failed:\n#{output}"

    assert output |> String.split("\n", trim: true) |> List.last() == @expected_output,
           "unexpected output from host `mix run`:\n#{output}"

    assert File.dir?(Path.join(dir, "_build/dev/lib/vsmcp_crdt/ebin")),
           "the host project did not build vsmcp_crdt into its own _build"
  end

  defp write_host_project(dir) do
    File.write!(Path.join(dir, "mix.exs"), """
    defmodule HostApp.MixProject do
      use Mix.Project

      def project do
        [
          app: :host_app,
          version: "0.0.1",
          elixir: "~> 1.14",
          deps: [{:vsmcp_crdt, path: #{inspect(@repo_dir)}}]
        ]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "lib/host_app.ex"), """
    defmodule HostApp do
      def check, do: inspect(#{@host_expression})
    end
    """)
  end

  # Inherits the environment (PATH, CARGO_TARGET_DIR, HOME, ...), but runs
  # the host in :dev with its own build and deps paths.
  defp mix(dir, args) do
    env = [
      {"MIX_ENV", "dev"},
      {"MIX_BUILD_PATH", nil},
      {"MIX_BUILD_ROOT", nil},
      {"MIX_DEPS_PATH", nil},
      {"MIX_EXS", nil},
      {"MIX_LOCKFILE", nil},
      {"MIX_TARGET", nil}
    ]

    System.cmd("mix", args,
      cd: dir,
      env: env,
      stderr_to_stdout: true
    )
  end
end
