defmodule Vsmcp.Test.Package do
  @moduledoc """
  This project as its users get it, for the tests in
  `test/vsmcp/crdt/package_test.exs`:

    * `files/0` - the files `mix hex.build` would put in the package: the
      `package: [files: ...]` of mix.exs expanded the way Hex expands them
      (directories recursively, dotfiles included), minus
      `exclude_patterns`;
    * `copy!/1` - exactly those files copied to a directory, with their
      modification times (so cargo, which judges path crates by mtime, does
      not rebuild a copy that did not change), and a copy of this checkout's
      `../shared/vendor` beside it, so the copy resolves its dependencies
      from `../shared/vendor` as the checkout does (no Hex);
    * `host_project!/2` - a fresh Mix project depending on a copy by `path:`,
      whose `HostApp.check/1` opens a store and counts to 5;
    * `mix/3` - runs `mix` in a host project with a given environment and
      returns output, exit status and elapsed milliseconds.
  """

  @repo_dir Path.expand("../..", __DIR__)

  @doc "The package's files, relative to the project root, sorted."
  @spec files() :: [Path.t()]
  def files do
    package = Mix.Project.config()[:package]
    excluded = Keyword.get(package, :exclude_patterns, [])

    package
    |> Keyword.fetch!(:files)
    |> Enum.flat_map(&Path.wildcard(Path.join(@repo_dir, &1), match_dot: true))
    |> Enum.flat_map(&with_contents/1)
    |> Enum.map(&Path.relative_to(&1, @repo_dir))
    |> Enum.reject(fn file -> Enum.any?(excluded, &(file =~ &1)) end)
    |> Enum.filter(&File.regular?(Path.join(@repo_dir, &1)))
    |> Enum.uniq()
    |> Enum.sort()
  end

  defp with_contents(path) do
    case File.lstat(path) do
      {:ok, %File.Stat{type: :directory}} ->
        [path | path |> File.ls!() |> Enum.flat_map(&with_contents(Path.join(path, &1)))]

      _ ->
        [path]
    end
  end

  @doc """
  Copy the package's files to `base/vsmcp_crdt` (emptied first) and the
  vendored packages to `base/shared/vendor`. Returns the copy's path.
  """
  @spec copy!(Path.t()) :: Path.t()
  def copy!(base) do
    dest = Path.join(base, "vsmcp_crdt")
    File.rm_rf!(dest)

    for file <- files() do
      source = Path.join(@repo_dir, file)
      target = Path.join(dest, file)
      File.mkdir_p!(Path.dirname(target))
      File.cp!(source, target)
      File.touch!(target, File.stat!(source, time: :posix).mtime)
    end

    # A copy, not a link: Mix resolves the vendored packages' own relative
    # paths (`path: "../rustler"`) from their physical location, and ours
    # from the copy's, so both must be the same directory.
    vendor = Path.expand("../shared/vendor", @repo_dir)
    vendor_copy = Path.join(base, "shared/vendor")

    if File.dir?(vendor) and not File.dir?(vendor_copy) do
      File.mkdir_p!(Path.dirname(vendor_copy))
      File.cp_r!(vendor, vendor_copy)
      # The originals are read-only; the copy must be removable.
      for path <- [vendor_copy | Path.wildcard(Path.join(vendor_copy, "**"), match_dot: true)] do
        File.chmod!(path, if(File.dir?(path), do: 0o755, else: 0o644))
      end
    end

    dest
  end

  @doc """
  Write a fresh host project into `dir` (emptied first) that depends on
  the package copy at `dep_path`.
  """
  @spec host_project!(Path.t(), Path.t()) :: Path.t()
  def host_project!(dir, dep_path) do
    File.rm_rf!(dir)
    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule HostApp.MixProject do
      use Mix.Project

      def project do
        [
          app: :host_app,
          version: "0.0.1",
          elixir: "~> 1.14",
          deps: [{:vsmcp_crdt, path: #{inspect(dep_path)}}]
        ]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(dir, "lib/host_app.ex"), """
    defmodule HostApp do
      alias Vsmcp.CRDT.ContextStore

      def check(data_dir) do
        {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: data_dir])
        :ok = ContextStore.create(store, :visits, :g_counter)
        {:ok, _} = ContextStore.increment(store, :visits, 2)
        {:ok, _} = ContextStore.increment(store, :visits, 3)
        {:ok, value} = ContextStore.get(store, :visits)
        :ok = ContextStore.stop(store)
        "store says \#{value}"
      end
    end
    """)

    dir
  end

  @doc """
  Run `mix args` in the host project `dir` in `:dev`, with `env` on top of
  this VM's environment (Mix's own path variables cleared). Returns
  `{output, exit_status, elapsed_ms}`.
  """
  @spec mix(Path.t(), [String.t()], [{String.t(), String.t() | nil}]) ::
          {String.t(), non_neg_integer(), non_neg_integer()}
  def mix(dir, args, env) do
    mix = System.find_executable("mix") || raise "mix not on PATH"

    base = [
      {"MIX_ENV", "dev"},
      {"MIX_BUILD_PATH", nil},
      {"MIX_BUILD_ROOT", nil},
      {"MIX_DEPS_PATH", nil},
      {"MIX_EXS", nil},
      {"MIX_LOCKFILE", nil},
      {"MIX_TARGET", nil}
    ]

    started = System.monotonic_time(:millisecond)
    {output, status} = System.cmd(mix, args, cd: dir, env: base ++ env, stderr_to_stdout: true)
    {output, status, System.monotonic_time(:millisecond) - started}
  end

  @doc """
  `PATH` without the directories that hold a `cargo` (or `rustc`): what a
  machine without a Rust toolchain has.
  """
  @spec path_without_rust() :: String.t()
  def path_without_rust do
    System.get_env("PATH", "")
    |> String.split(":", trim: true)
    |> Enum.reject(fn dir ->
      File.exists?(Path.join(dir, "cargo")) or File.exists?(Path.join(dir, "rustc"))
    end)
    |> Enum.join(":")
  end
end
