defmodule VsmcpCrdt.MixProject do
  use Mix.Project

  @version "0.1.0"
  @source_url "https://github.com/vsmcp/vsmcp_crdt"

  # VSMCP_CRDT_BUILD=1 builds the NIF from source with cargo instead of
  # downloading the precompiled one (see `Vsmcp.CRDT.Native`); rustler's Mix
  # side is then needed, so it stops being optional for projects that depend
  # on this one.
  @force_build? System.get_env("VSMCP_CRDT_BUILD") in ["1", "true"]

  def project do
    [
      app: :vsmcp_crdt,
      version: @version,
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      name: "vsmcp_crdt",
      description:
        "Delta-state CRDTs (counters, OR-Sets, LWW registers) written once in Rust, " <>
          "with a tiered RocksDB-backed store that syncs between BEAM nodes.",
      source_url: @source_url,
      homepage_url: @source_url,
      package: package(),
      docs: docs()
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

  defp deps do
    [
      # The NIF: downloaded precompiled, or built with rustler when forced.
      dep(:rustler_precompiled, "~> 0.8"),
      dep(:rustler, "~> 0.36", optional: not @force_build?, runtime: false),
      # Option schemas: validation and the option tables of the docs.
      dep(:nimble_options, "~> 1.1"),
      # Optional integrations, compiled only when the host application has them.
      dep(:phoenix_pubsub, "~> 2.1", optional: true),
      dep(:telemetry, "~> 1.2", optional: true),
      dep(:telemetry_metrics, "~> 1.0", optional: true),
      # Property tests of the Elixir API (random terms that shrink).
      dep(:stream_data, "~> 1.1", only: :test),
      # `mix docs`; MIX_ENV=docs builds them without compiling the NIF.
      dep(:ex_doc, "~> 0.34", only: [:dev, :docs], runtime: false)
    ]
  end

  # Users get every package from Hex. This project's own build machines
  # cannot reach Hex, so there each one resolves to the vendored copy in
  # ../shared/vendor/<name> when that folder exists, still checked against the
  # same version requirement (see the README's dependency table).
  defp dep(name, requirement, opts \\ []) do
    vendored = Path.expand("../shared/vendor/#{name}", __DIR__)

    if File.dir?(vendored) do
      {name, requirement, [path: vendored] ++ opts}
    else
      {name, requirement, opts}
    end
  end

  # Everything a forced local build needs (the Rust workspace, its lock file
  # and cargo configuration), and the checksums of the precompiled NIFs.
  # test/vsmcp/crdt/package_test.exs builds a host project against exactly
  # these files.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{
        "GitHub" => @source_url,
        "Changelog" => "#{@source_url}/blob/v#{@version}/CHANGELOG.md"
      },
      files: [
        "lib",
        "native",
        ".cargo/config.toml",
        "Cargo.toml",
        "Cargo.lock",
        "checksum-Elixir.Vsmcp.CRDT.Native.exs",
        "mix.exs",
        "README.md",
        "CHANGELOG.md",
        "LICENSE"
      ],
      exclude_patterns: [~r{/target/}]
    ]
  end

  defp docs do
    [
      main: "readme",
      source_ref: "v#{@version}",
      extras: [
        "README.md",
        "guides/distributed-sync.md",
        "guides/storage-and-durability.md",
        "guides/upgrading-from-dets.md",
        "guides/operations.md",
        "guides/telemetry.md",
        "guides/security.md",
        "guides/design-decisions.md",
        "CHANGELOG.md",
        "LICENSE"
      ],
      groups_for_extras: [
        Guides: ~r{guides/}
      ],
      groups_for_modules: [
        API: [
          Vsmcp.CRDT.ContextStore,
          Vsmcp.CRDT.Supervisor,
          Vsmcp.CRDT.Error,
          Vsmcp.CRDT.UnsafeTerm,
          Vsmcp.CRDT.Telemetry,
          Vsmcp.CRDT.Telemetry.Metrics
        ],
        "Pure types": [
          Vsmcp.CRDT.Behaviour,
          Vsmcp.CRDT.Types.GCounter,
          Vsmcp.CRDT.Types.PNCounter,
          Vsmcp.CRDT.Types.ORSet,
          Vsmcp.CRDT.Types.LWWRegister,
          Vsmcp.CRDT.HLC
        ],
        Sync: [
          Vsmcp.CRDT.Sync.Peer,
          Vsmcp.CRDT.Sync.Transport,
          Vsmcp.CRDT.Sync.Transport.PubSub,
          Vsmcp.CRDT.Sync.Transport.PG
        ],
        Storage: [
          Vsmcp.CRDT.Storage.DetsImport,
          Vsmcp.CRDT.Storage.Location,
          Vsmcp.CRDT.ContextStore.Options
        ],
        Testing: [
          Vsmcp.CRDT.Sync.Transport.Faulty
        ]
      ]
    ]
  end
end
