defmodule Vsmcp.CRDT.HostExitLoop do
  @moduledoc """
  Runs a throwaway host application's `mix test` again and again and
  records how each OS process exits: the stores of this library must never
  crash the VM at exit (no `pthread lock: Invalid argument` abort, no
  segfault while C++ static destructors run), whatever is still open,
  writing or closing when the VM halts.

  The host project is this repository's `test/host_app/` (see its README)
  plus a generated `mix.exs` depending on vsmcp_crdt by `path:`. It is
  compiled once (`MIX_ENV=test mix compile`), then every run gets a fresh
  working directory of its own, so the relative paths of the host's code
  (`test_crdt.dets`, the default store's `data/`) land there and no run
  sees another's files. Runs use `MIX_EXS` to point at the compiled project
  and `--no-compile --no-deps-check`, so no run invokes cargo.

  * `build!/1` - write and compile the host project under a directory.
  * `run/2` - the suite loop and the durability rounds; returns results.
  * `ok?/1` and `report/1` - the verdict and a summary (exit statuses
    counted per status, timings, the tail of the first failing runs).

  Used by the `:host_exit_loop` test in
  `test/vsmcp/crdt/host_project_test.exs`, and standalone by
  `test/support/host_exit_loop.exs`.
  """

  @repo_dir Path.expand("../..", __DIR__)
  @template_dir Path.join(@repo_dir, "test/host_app")

  # No run may take longer than this (a VM hung at exit counts as a failure).
  @run_timeout 180_000
  @compile_timeout 1_800_000
  # Output kept per run (the tail); a crashing run prints its reason last.
  @max_output 256 * 1024

  @type ctx :: %{base: Path.t(), project: Path.t()}
  @type run_result :: %{
          kind: :suite | :durability_write | :durability_read,
          run: pos_integer(),
          dir: Path.t(),
          status: non_neg_integer() | :timeout,
          ms: non_neg_integer(),
          output: String.t()
        }

  @doc """
  Write the host project into `base/project` and compile it in `:test`.
  Raises with the compiler output when the compile fails.
  """
  @spec build!(Path.t()) :: ctx()
  def build!(base) do
    project = Path.join(base, "project")
    File.mkdir_p!(project)
    write_project!(project)
    ctx = %{base: base, project: project}

    case mix(ctx, project, ["compile"], @compile_timeout) do
      {_output, 0, _ms} -> ctx
      {output, status, _ms} -> raise "host `mix compile` failed (#{inspect(status)}):\n#{output}"
    end
  end

  @doc """
  Run the host's `mix test` `runs` times, then `durability_rounds` rounds of
  the durability scripts, each in a new directory under `base/runs`.

  Options: `:runs` (default 30), `:durability_rounds` (default 5),
  `:progress` (a function given each result as it comes), `:keep` (keep
  each run's directory; by default it is removed once the run is over: a
  store still open when its VM halts leaves its preallocated RocksDB
  write-ahead log behind, about 70 MB, so a run's directory grows to
  hundreds of MB).
  """
  @spec run(ctx(), keyword()) :: %{suite: [run_result()], durability: [map()]}
  def run(ctx, opts \\ []) do
    runs = Keyword.get(opts, :runs, 30)
    rounds = Keyword.get(opts, :durability_rounds, 5)
    progress = Keyword.get(opts, :progress, fn _ -> :ok end)
    keep? = Keyword.get(opts, :keep, false)

    done = fn result ->
      unless keep?, do: File.rm_rf!(result.dir)
      progress.(result)
      result
    end

    suite = for i <- 1..runs//1, do: done.(run_suite(ctx, i))
    durability = for i <- 1..rounds//1, do: done.(durability_round(ctx, i))

    %{suite: suite, durability: durability}
  end

  @doc "One run of the host's `mix test` in a fresh directory."
  @spec run_suite(ctx(), pos_integer()) :: run_result()
  def run_suite(ctx, i) do
    dir = run_dir(ctx, "suite_#{i}")
    {output, status, ms} = mix(ctx, dir, ["test", "--no-compile", "--no-deps-check"])
    %{kind: :suite, run: i, dir: dir, status: status, ms: ms, output: output}
  end

  @doc """
  One durability round in a fresh directory: `durability_write.exs` (acked
  writes, then `System.halt()`), then `durability_read.exs`, whose verdict
  line is `:verdict` (`"durability: ok"` when nothing was lost).
  """
  @spec durability_round(ctx(), pos_integer()) :: map()
  def durability_round(ctx, i) do
    dir = run_dir(ctx, "durability_#{i}")
    write = script(ctx, dir, "durability_write.exs", :durability_write, i)
    read = script(ctx, dir, "durability_read.exs", :durability_read, i)

    verdict =
      read.output
      |> String.split("\n")
      |> Enum.find(&String.starts_with?(&1, "durability: "))

    %{kind: :durability, run: i, dir: dir, write: write, read: read, verdict: verdict}
  end

  defp script(ctx, dir, name, kind, i) do
    path = Path.join([ctx.project, "scripts", name])
    {output, status, ms} = mix(ctx, dir, ["run", "--no-compile", "--no-deps-check", path])
    %{kind: kind, run: i, dir: dir, status: status, ms: ms, output: output}
  end

  @doc "Every run exited 0 and every durability round found all its writes."
  @spec ok?(map()) :: boolean()
  def ok?(%{suite: suite, durability: durability}) do
    Enum.all?(suite, &(&1.status == 0)) and
      Enum.all?(durability, fn d ->
        d.write.status == 0 and d.read.status == 0 and d.verdict == "durability: ok"
      end)
  end

  @doc """
  A summary: exit statuses counted per status for the suite runs, the
  durability writers and readers, the durability verdicts, timings, and
  the output tails of the first failing runs.
  """
  @spec report(map()) :: String.t()
  def report(%{suite: suite, durability: durability}) do
    writes = Enum.map(durability, & &1.write)
    reads = Enum.map(durability, & &1.read)

    verdicts =
      durability
      |> Enum.frequencies_by(fn d -> if d.verdict == "durability: ok", do: "ok", else: "LOST" end)
      |> Enum.map_join(", ", fn {v, n} -> "#{v} x#{n}" end)

    failing =
      Enum.reject(suite ++ writes ++ reads, &(&1.status == 0)) ++
        for(d <- durability, d.verdict != "durability: ok", do: d.read)

    details =
      failing
      |> Enum.uniq()
      |> Enum.take(3)
      |> Enum.map_join("\n", fn r ->
        "--- #{r.kind} run #{r.run} (exit #{describe(r.status)}, #{r.ms} ms#{kept(r.dir)}), last lines:\n" <>
          tail(r.output, 25)
      end)

    lost =
      durability
      |> Enum.reject(&(&1.verdict == "durability: ok"))
      |> Enum.map_join("\n", fn d ->
        "  round #{d.run}: #{d.verdict || "(no verdict printed)"}"
      end)

    """
    host `mix test` runs: #{length(suite)}; exit statuses: #{counts(suite)}; #{timing(suite)}
    durability rounds: #{length(durability)}; writer (acked writes, then System.halt()) exit statuses: #{counts(writes)}; reader exit statuses: #{counts(reads)}; verdicts: #{if verdicts == "", do: "none", else: verdicts}
    #{if lost == "", do: "", else: "durability losses:\n" <> lost <> "\n"}#{details}
    """
  end

  @doc "Exit statuses counted: `0 x27, 134 (SIGABRT) x3`."
  def counts([]), do: "none"

  def counts(results) do
    results
    |> Enum.frequencies_by(& &1.status)
    |> Enum.sort()
    |> Enum.map_join(", ", fn {status, n} -> "#{describe(status)} x#{n}" end)
  end

  @signals %{4 => "SIGILL", 6 => "SIGABRT", 7 => "SIGBUS", 9 => "SIGKILL", 11 => "SIGSEGV"}

  @doc "An exit status with its meaning."
  def describe(:timeout), do: "timeout (killed after #{div(@run_timeout, 1000)} s)"
  def describe(1), do: "1 (error)"
  def describe(2), do: "2 (test failures)"

  def describe(status) when status > 128 do
    "#{status} (#{Map.get(@signals, status - 128, "signal #{status - 128}")})"
  end

  def describe(status), do: "#{status}"

  defp kept(dir), do: if(File.dir?(dir), do: ", in #{dir}", else: "")

  defp timing([]), do: "no timings"

  defp timing(results) do
    ms = results |> Enum.map(& &1.ms) |> Enum.sort()
    median = Enum.at(ms, div(length(ms), 2))
    "per run #{List.first(ms)}-#{List.last(ms)} ms (median #{median} ms)"
  end

  defp tail(output, n) do
    output |> String.split("\n") |> Enum.take(-n) |> Enum.join("\n")
  end

  defp run_dir(ctx, name) do
    dir = Path.join([ctx.base, "runs", name])
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    dir
  end

  # ---------------------------------------------------------------------------
  # The project

  defp write_project!(project) do
    for sub <- ["lib", "test", "scripts"] do
      File.rm_rf!(Path.join(project, sub))
      File.mkdir_p!(Path.join(project, sub))
    end

    for file <- Path.wildcard(Path.join(@template_dir, "{lib,test,scripts}/*")) do
      rel = Path.relative_to(file, @template_dir)
      # Named *_cases.exs in this repository so that its own `mix test`
      # does not run them.
      dest = String.replace_suffix(rel, "_cases.exs", "_test.exs")
      File.cp!(file, Path.join(project, dest))
    end

    File.mkdir_p!(Path.join(project, "config"))
    File.write!(Path.join(project, "config/config.exs"), "import Config\n")
    # A copy of the package's files, not this checkout: the host's (non-test)
    # NIF build must not land in this checkout's priv/native/ while other
    # tests start :peer nodes (see HostProjectTest).
    dep = Vsmcp.Test.Package.copy!(Path.join(project, "dep"))
    File.write!(Path.join(project, "mix.exs"), mix_exs(project, dep))
  end

  # Every path absolute: runs happen in other working directories.
  defp mix_exs(project, dep) do
    """
    defmodule HostApp.MixProject do
      use Mix.Project

      @root #{inspect(project)}

      def project do
        [
          app: :host_app,
          version: "0.0.1",
          elixir: "~> 1.14",
          build_path: Path.join(@root, "_build"),
          deps_path: Path.join(@root, "deps"),
          lockfile: Path.join(@root, "mix.lock"),
          config_path: Path.join(@root, "config/config.exs"),
          # Compiled once, in @root; runs pass --no-compile.
          elixirc_paths: ["lib"],
          test_paths: [Path.join(@root, "test")],
          deps: [
            {:vsmcp_crdt, path: #{inspect(dep)}},
            #{phoenix_pubsub_dep(dep)}
          ]
        ]
      end

      def application do
        [mod: {HostApp.Application, []}, extra_applications: [:logger]]
      end
    end
    """
  end

  # As this repository's mix.exs: the vendored copy where Hex is not
  # reachable, Hex otherwise.
  # The vendored copy beside the package copy at `dep` (`Package.copy!/1`
  # puts it there): the host's dependency and the package's must be one.
  defp phoenix_pubsub_dep(dep) do
    vendored = Path.expand("../shared/vendor/phoenix_pubsub", dep)

    if File.dir?(vendored),
      do: "{:phoenix_pubsub, path: #{inspect(vendored)}}",
      else: ~S({:phoenix_pubsub, "~> 2.1"})
  end

  # ---------------------------------------------------------------------------
  # Running mix

  # `mix args` in `cwd` for the host project, in :test, with a timeout;
  # returns {output, exit status or :timeout, elapsed ms}. Inherits the
  # environment (PATH, HOME, CARGO_TARGET_DIR, ...) except Mix's own paths
  # and TMPDIR: stores without a location live under System.tmp_dir!/0, and
  # those still open when a VM halts are never removed (several MB each), so
  # each run's go into its own directory, removed with the rest.
  defp mix(ctx, cwd, args, timeout \\ @run_timeout) do
    mix = System.find_executable("mix") || raise "mix not on PATH"
    tmp = Path.join(cwd, "tmp")
    File.mkdir_p!(tmp)

    env =
      [
        {"TMPDIR", tmp},
        # Our NIF built from this checkout (see Vsmcp.CRDT.Native).
        {"VSMCP_CRDT_BUILD", "1"},
        {"MIX_ENV", "test"},
        {"MIX_EXS", Path.join(ctx.project, "mix.exs")},
        {"MIX_BUILD_PATH", false},
        {"MIX_BUILD_ROOT", false},
        {"MIX_DEPS_PATH", false},
        {"MIX_LOCKFILE", false},
        {"MIX_TARGET", false}
      ]
      |> Enum.map(fn
        {k, false} -> {String.to_charlist(k), false}
        {k, v} -> {String.to_charlist(k), String.to_charlist(v)}
      end)

    started = System.monotonic_time(:millisecond)

    port =
      Port.open({:spawn_executable, mix}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: args,
        cd: cwd,
        env: env
      ])

    deadline = started + timeout
    {output, status} = collect(port, deadline, [], 0)
    {output, status, System.monotonic_time(:millisecond) - started}
  end

  defp collect(port, deadline, acc, size) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} ->
        {acc, size} = trim([data | acc], size + byte_size(data))
        collect(port, deadline, acc, size)

      {^port, {:exit_status, status}} ->
        {acc |> Enum.reverse() |> IO.iodata_to_binary(), status}
    after
      left ->
        case Port.info(port, :os_pid) do
          {:os_pid, pid} -> System.cmd("kill", ["-9", Integer.to_string(pid)])
          nil -> :ok
        end

        {drain(port, acc), :timeout}
    end
  end

  # What a killed run printed last, until its port closes.
  defp drain(port, acc) do
    receive do
      {^port, {:data, data}} -> drain(port, [data | acc])
      {^port, {:exit_status, _}} -> acc |> Enum.reverse() |> IO.iodata_to_binary()
    after
      5_000 -> acc |> Enum.reverse() |> IO.iodata_to_binary()
    end
  end

  defp trim(acc, size) when size <= @max_output, do: {acc, size}

  defp trim(acc, _size) do
    bin = acc |> Enum.reverse() |> IO.iodata_to_binary()
    keep = binary_part(bin, byte_size(bin) - div(@max_output, 2), div(@max_output, 2))
    {[keep], byte_size(keep)}
  end
end
