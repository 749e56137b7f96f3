defmodule Vsmcp.CRDT.HostProjectTest do
  @moduledoc """
  Uses this repository the way a developer of a host application does: as a
  `path:` dependency of a fresh Mix project, which builds our NIF from this
  checkout's sources (`VSMCP_CRDT_BUILD=1`: `use Rustler` through
  `RustlerPrecompiled`, see `Vsmcp.CRDT.Native`) and must be able to call
  it. (`package_test.exs` covers the package as published: the downloaded
  precompiled NIF, and a build from exactly the package's files.)

  The host project lives in its own temporary directory with its own `_build`
  and `deps`, and depends on a copy of this repository's package files
  (`Vsmcp.Test.Package.copy!/1`), so it writes nothing into this checkout:
  the suite's own test build of the NIF stays in `priv/native/` for the
  `:peer` nodes other tests start meanwhile. Cargo reuses `CARGO_TARGET_DIR`
  from the environment, so the RocksDB build is reused.

  The second test (`:host_exit_loop`) runs a host application's own suite
  30 times against `Vsmcp.CRDT.HostExitLoop` (test/support), with the host
  project's files in test/host_app: no run may crash the VM at exit, and no
  acknowledged write may be lost to `System.halt()`.
  """

  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.HostExitLoop

  @moduletag :host_project

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

  # Issue 9: `mix release` of a host application carries the NIF
  # (priv/native of this library) and the release starts and uses a store.
  @tag timeout: 600_000
  test "a release of the host project includes the NIF and its store works", %{dir: dir} do
    write_host_project(dir)
    {output, status} = mix(dir, ["release", "--overwrite"])
    assert status == 0, "host `mix release` failed:\n#{output}"

    assert [_] =
             Path.wildcard(
               Path.join(dir, "_build/dev/rel/host_app/lib/vsmcp_crdt-*/priv/native/*.so")
             )

    data = Path.join(dir, "release_data")

    script = """
    {:ok, _} = Application.ensure_all_started(:vsmcp_crdt)
    alias Vsmcp.CRDT.ContextStore
    {:ok, s} = ContextStore.start_link(storage_opts: [data_dir: #{inspect(data)}])
    :ok = ContextStore.create(s, :visits, :g_counter)
    {:ok, n} = ContextStore.increment(s, :visits, 5)
    :ok = ContextStore.stop(s)
    IO.puts("release store: \#{n}")
    """

    {output, status} =
      System.cmd(Path.join(dir, "_build/dev/rel/host_app/bin/host_app"), ["eval", script],
        stderr_to_stdout: true,
        env: [{"RELEASE_COOKIE", "vsmcp_release_test"}]
      )

    assert status == 0, "the release did not run:\n#{output}"
    assert output =~ "release store: 5"
  end

  # Issue 7 section 1: a host application's suite passed, then its OS process
  # died at VM exit ("pthread lock: Invalid argument", exit 134, or a
  # segfault, 139) about one run in four, because RocksDB work (stores
  # closing, flushes) was still running while exit() ran the C++ static
  # destructors. The host project (test/host_app, see its README) is
  # compiled once; its `mix test` then runs again and again, each run in a
  # directory of its own, leaving open, writing, taken-over and killed
  # stores behind when the VM halts; every run must exit 0. Then durability
  # rounds: acknowledged relaxed writes, System.halt() at once, and the next
  # run must find every one of them.
  #
  # Standalone, for iterating on a fix (prints each run as it comes):
  #
  #     MIX_ENV=test mix run test/support/host_exit_loop.exs --runs 30 --durability 5
  #
  # or this test alone:
  #
  #     MIX_ENV=test mix test --only host_exit_loop test/vsmcp/crdt/host_project_test.exs
  #
  # VSMCP_EXIT_LOOP_RUNS and VSMCP_EXIT_LOOP_DURABILITY change the counts.
  @tag :host_exit_loop
  @tag timeout: 1_800_000
  test "the host's suite exits 0 every time with stores open, writing, taken over and killed at " <>
         "VM halt, and System.halt() keeps every acknowledged write",
       %{dir: dir} do
    ctx = HostExitLoop.build!(dir)

    results =
      HostExitLoop.run(ctx,
        runs: env_count("VSMCP_EXIT_LOOP_RUNS", 30),
        durability_rounds: env_count("VSMCP_EXIT_LOOP_DURABILITY", 5)
      )

    assert HostExitLoop.ok?(results), HostExitLoop.report(results)
  end

  defp env_count(var, default) do
    case System.get_env(var) do
      nil -> default
      value -> String.to_integer(value)
    end
  end

  # The host depends on a copy of this repository's package files: a
  # `path:` dependency on the checkout itself would install the host's
  # (non-test) NIF build into this checkout's priv/native/ while the rest of
  # the suite runs, and :peer nodes started later would load it.
  defp write_host_project(dir) do
    dep = Vsmcp.Test.Package.copy!(Path.join(dir, "dep"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule HostApp.MixProject do
      use Mix.Project

      def project do
        [
          app: :host_app,
          version: "0.0.1",
          elixir: "~> 1.14",
          deps: [{:vsmcp_crdt, path: #{inspect(dep)}}]
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
  # the host in :dev with its own build and deps paths, building our NIF.
  defp mix(dir, args) do
    env = [
      {"VSMCP_CRDT_BUILD", "1"},
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
