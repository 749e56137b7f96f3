defmodule Vsmcp.CRDT.PackageTest do
  @moduledoc """
  The package as a user gets it: exactly the files `package: [files: ...]`
  of mix.exs lists (`Vsmcp.Test.Package`), copied out of the checkout, as
  the dependency of a fresh host Mix project.

    * **Precompiled.** `bin/release-nif` builds this machine's NIF tarball
      and writes its checksum into the copy's checksum file; a loopback HTTP
      server (`Vsmcp.Test.StaticHTTP`) stands in for the release host. The
      host project compiles with no `cargo` on its `PATH`: the NIF is
      downloaded, verified against the checksum file, loaded, and a store
      counts. A tarball whose checksum does not match is refused.
    * **Forced local build** (`VSMCP_CRDT_BUILD=1`): the same copy builds
      its NIF with cargo through Rustler and a store counts; this also
      proves the copy holds everything a build needs (the Rust workspace,
      its lock file, the cargo configuration).

  Each prints how long the host project took from nothing to a working
  store (`mix compile` plus the first `mix run`); nothing asserts on it.
  The copies live in `_build/package_test/` at fixed paths, so cargo's
  fingerprints of the copied crates stay valid from one run to the next.
  """

  use ExUnit.Case, async: true

  alias Vsmcp.Test.{Package, StaticHTTP}

  @moduletag :package
  @moduletag timeout: 1_800_000

  @repo_dir Path.expand("../../..", __DIR__)
  @work_dir Path.join(@repo_dir, "_build/package_test")
  @checksum_file "checksum-Elixir.Vsmcp.CRDT.Native.exs"

  # Variables that would change how the host project gets its NIF.
  @neutral_env [
    {"VSMCP_CRDT_BUILD", nil},
    {"VSMCP_CRDT_NIF_BASE_URL", nil},
    {"RUSTLER_PRECOMPILED_FORCE_BUILD_ALL", nil},
    {"RUSTLER_PRECOMPILED_GLOBAL_CACHE_PATH", nil}
  ]

  test "the package's files: the Rust workspace, the checksums, the library; no build output" do
    files = Package.files()

    for needed <- [
          "mix.exs",
          "Cargo.toml",
          "Cargo.lock",
          ".cargo/config.toml",
          @checksum_file,
          "native/vsmcp_crdt_nif/Cargo.toml",
          "native/vsmcp_crdt_nif/src/lib.rs",
          "native/vsmcp_crdt_core/Cargo.toml",
          "lib/vsmcp/crdt/native.ex",
          "LICENSE",
          "CHANGELOG.md",
          "README.md"
        ] do
      assert needed in files, "#{needed} is not in the package"
    end

    for file <- files do
      refute file =~ ~r{^(priv|_build|deps|test|doc)/|(^|/)target/}, "#{file} should not ship"
    end
  end

  describe "precompiled NIF" do
    setup do
      base = Path.join(@work_dir, "precompiled")
      File.rm_rf!(base)
      copy = Package.copy!(base)
      www = Path.join(base, "www")

      {output, status} =
        System.cmd(
          Path.join(@repo_dir, "bin/release-nif"),
          ["--out", www, "--checksum-file", Path.join(copy, @checksum_file)],
          cd: @repo_dir,
          stderr_to_stdout: true
        )

      assert status == 0, "bin/release-nif failed:\n#{output}"
      tarball = output |> String.split("\n", trim: true) |> List.last()
      assert File.regular?(tarball), "bin/release-nif printed no tarball:\n#{output}"

      %{base: base, copy: copy, www: www, tarball: Path.basename(tarball)}
    end

    test "a host project with no cargo on PATH downloads, verifies and loads it; a store works",
         ctx do
      base_url = StaticHTTP.start_link!(ctx.www)
      host = Package.host_project!(Path.join(ctx.base, "host"), ctx.copy)
      cache = Path.join(ctx.base, "cache")

      env =
        @neutral_env ++
          [
            {"PATH", Package.path_without_rust()},
            {"VSMCP_CRDT_NIF_BASE_URL", base_url},
            # RustlerPrecompiled's download cache (under the user cache
            # directory): the test's own, so the download really happens.
            {"XDG_CACHE_HOME", cache}
          ]

      {output, status, compile_ms} = Package.mix(host, ["compile"], env)
      assert status == 0, "host `mix compile` failed:\n#{output}"

      data = Path.join(ctx.base, "data")
      {output, status, run_ms} = Package.mix(host, ["run", "-e", check(data)], env)
      assert status == 0, "host `mix run` failed:\n#{output}"
      assert output =~ "store says 5"

      # Downloaded once, from the loopback server, and cached.
      assert_received {StaticHTTP, path, 200}
      assert path == "/nifs/" <> ctx.tarball
      refute_received {StaticHTTP, _, _}

      assert [_] =
               Path.wildcard(Path.join(cache, "rustler_precompiled/precompiled_nifs/*.tar.gz"))

      # The precompiled library was loaded, nothing was built.
      native = Path.join(host, "_build/dev/lib/vsmcp_crdt/priv/native")
      assert File.ls!(native) == [String.replace_suffix(ctx.tarball, ".tar.gz", "")]
      refute File.exists?(Path.join(host, "_build/dev/lib/rustler"))

      report("precompiled NIF, no cargo", compile_ms, run_ms)
    end

    test "a tarball that does not match the checksum file is refused", ctx do
      # Same name, different bytes (gzip ignores trailing garbage).
      tampered = Path.join(ctx.base, "tampered")
      File.mkdir_p!(tampered)

      File.write!(
        Path.join(tampered, ctx.tarball),
        File.read!(Path.join(ctx.www, ctx.tarball)) <> "!"
      )

      base_url = StaticHTTP.start_link!(tampered)
      host = Package.host_project!(Path.join(ctx.base, "host_tampered"), ctx.copy)

      env =
        @neutral_env ++
          [
            {"PATH", Package.path_without_rust()},
            {"VSMCP_CRDT_NIF_BASE_URL", base_url},
            {"XDG_CACHE_HOME", Path.join(ctx.base, "cache_tampered")}
          ]

      {output, status, _ms} = Package.mix(host, ["compile"], env)
      assert status != 0
      assert output =~ "the integrity check failed"
      assert Path.wildcard(Path.join(host, "_build/dev/lib/vsmcp_crdt/priv/native/*.so")) == []
    end
  end

  test "VSMCP_CRDT_BUILD=1: the package's files build the NIF with cargo; a store works" do
    base = Path.join(@work_dir, "forced")
    copy = Package.copy!(base)
    host = Package.host_project!(Path.join(base, "host"), copy)
    File.rm_rf!(Path.join(copy, "priv"))

    env = @neutral_env ++ [{"VSMCP_CRDT_BUILD", "1"}]

    {output, status, compile_ms} = Package.mix(host, ["compile"], env)
    assert status == 0, "host `mix compile` failed:\n#{output}"
    assert output =~ "Compiling crate vsmcp_crdt_nif in release mode"

    data = Path.join(base, "data")
    File.rm_rf!(data)
    {output, status, run_ms} = Package.mix(host, ["run", "-e", check(data)], env)
    assert status == 0, "host `mix run` failed:\n#{output}"
    assert output =~ "store says 5"

    # The library Rustler built, installed in the dependency's priv/.
    assert File.regular?(Path.join(copy, "priv/native/libvsmcp_crdt_nif.so"))

    report("forced local build (cargo, RocksDB already compiled)", compile_ms, run_ms)
  end

  defp check(data_dir), do: "IO.puts(HostApp.check(#{inspect(data_dir)}))"

  defp report(what, compile_ms, run_ms) do
    IO.puts(
      "\n#{what}: fresh host project to a working store in " <>
        "#{seconds(compile_ms + run_ms)} (mix compile #{seconds(compile_ms)}, " <>
        "first mix run #{seconds(run_ms)})"
    )
  end

  defp seconds(ms), do: :erlang.float_to_binary(ms / 1000, decimals: 1) <> " s"
end
