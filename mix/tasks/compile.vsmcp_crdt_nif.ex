defmodule Mix.Tasks.Compile.VsmcpCrdtNif do
  @shortdoc "Builds the Rust NIF (native/vsmcp_crdt_nif) and copies it to priv/native"

  @moduledoc """
  Mix compiler step that builds the `vsmcp_crdt_nif` cdylib with cargo and
  installs it as `priv/native/libvsmcp_crdt_nif.so`, where
  `Vsmcp.CRDT.Native` loads it from.

  It lives outside `lib/` and `mix.exs` loads it with `Code.require_file/2`,
  so that it exists before anything of this project is compiled, also when
  this project is a `path:` or `git:` dependency of another Mix project: Mix
  evaluates our `mix.exs`, finds the task through `compilers:` and runs it in
  the dependency's own directory.

  * Always `cargo build --release`: the workspace uses one profile everywhere
    so the bundled RocksDB C++ library is compiled once (see `Cargo.toml`).
  * Honours `CARGO_TARGET_DIR`; without it, builds into `~/.cache/vsmcp_crdt/target`.
  * Runs cargo on every compile; cargo itself is incremental, and the library
    is only copied when the built file changed.
  * The copy is written next to the destination and renamed over it, so a
    BEAM that already has the old library mapped is never handed a truncated
    file.
  """

  use Mix.Task.Compiler

  # The project root: this file is <root>/mix/tasks/.
  @project_dir Path.expand("../..", __DIR__)
  @crate "vsmcp_crdt_nif"
  @installed_name "lib#{@crate}.so"

  @impl Mix.Task.Compiler
  def run(_args) do
    cargo = find_cargo()
    target_dir = target_dir()

    # The test build carries test-only fault injection (see native/); a
    # dependency is built in :prod, so host applications never get it.
    features = if Mix.env() == :test, do: ["--features", "fault-injection"], else: []

    case cargo(cargo, ["build", "--release", "-p", @crate] ++ features, target_dir) do
      0 ->
        :ok

      status ->
        Mix.raise(
          "`cargo build --release -p #{@crate}` failed (exit status #{status}) in " <>
            "#{@project_dir}; see the cargo output above"
        )
    end

    status = install(built_library(target_dir), installed_path())

    # Mix links <project>/priv into _build before compilers run, but only if
    # priv/ existed then; on a first build it did not, so link it now.
    Mix.Project.build_structure()

    {status, []}
  end

  @impl Mix.Task.Compiler
  def clean do
    File.rm(installed_path())
    :ok
  end

  # Streams cargo's output line by line as it comes (a cold build takes
  # minutes). A build with nothing to do prints only "Finished ..."; that line
  # is dropped so a no-op compile stays silent, as Mix compilers are.
  defp cargo(cargo, args, target_dir) do
    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        args: args,
        cd: @project_dir,
        env: [{~c"CARGO_TARGET_DIR", String.to_charlist(target_dir)}]
      ])

    stream_cargo(port, false)
  end

  defp stream_cargo(port, printed?) do
    receive do
      {^port, {:data, {_eol, line}}} ->
        if not printed? and String.match?(line, ~r/^\s*Finished /) do
          stream_cargo(port, printed?)
        else
          Mix.shell().info(line)
          stream_cargo(port, true)
        end

      {^port, {:exit_status, status}} ->
        status
    end
  end

  defp find_cargo do
    home_cargo = Path.join([System.user_home() || "", ".cargo", "bin", "cargo"])

    cond do
      path = System.find_executable("cargo") ->
        path

      File.regular?(home_cargo) ->
        home_cargo

      true ->
        Mix.raise(
          "cargo not found on PATH (nor in ~/.cargo/bin): vsmcp_crdt needs a Rust " <>
            "toolchain to build its NIF. Install one with rustup (https://rustup.rs) " <>
            "and make sure `cargo` is on PATH."
        )
    end
  end

  # Without CARGO_TARGET_DIR the build goes to a per-user cache shared by
  # every checkout, so a second clone (or a host project depending on this
  # one) does not rebuild RocksDB from scratch.
  defp target_dir do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir in [nil, ""] ->
        Path.join([System.user_home() || @project_dir, ".cache", "vsmcp_crdt", "target"])

      dir ->
        Path.expand(dir, @project_dir)
    end
  end

  defp built_library(target_dir) do
    file =
      case :os.type() do
        # macOS builds a .dylib; erlang:load_nif/2 looks for ".so" there too.
        {:unix, :darwin} -> "lib#{@crate}.dylib"
        _ -> "lib#{@crate}.so"
      end

    path = Path.join([target_dir, "release", file])

    if File.regular?(path) do
      path
    else
      Mix.raise("cargo reported success but #{path} does not exist")
    end
  end

  defp installed_path, do: Path.join([@project_dir, "priv", "native", @installed_name])

  defp install(source, dest) do
    if up_to_date?(source, dest) do
      :noop
    else
      File.mkdir_p!(Path.dirname(dest))
      tmp = dest <> ".tmp#{System.unique_integer([:positive])}"
      File.cp!(source, tmp)
      File.rename!(tmp, dest)
      Mix.shell().info("==> installed #{Path.relative_to(dest, @project_dir)}")
      :ok
    end
  end

  defp up_to_date?(source, dest) do
    with {:ok, src} <- File.stat(source, time: :posix),
         {:ok, dst} <- File.stat(dest, time: :posix) do
      src.size == dst.size and dst.mtime >= src.mtime
    else
      _ -> false
    end
  end
end
