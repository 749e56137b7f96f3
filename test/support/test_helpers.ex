defmodule Vsmcp.CRDT.TestHelpers do
  @moduledoc """
  Helpers shared by the ContextStore tests.

  * `eventually/2` - wait for a condition by polling until a deadline (tests
    never wait with a bare sleep, and never assert on durations).
  * `tmp_dir!/1` - a fresh directory owned by the calling test, removed when
    the test ends.
  * `start_store!/1` - a `Vsmcp.CRDT.ContextStore` under the test supervisor
    (stopped before the test's `on_exit` callbacks run), never restarted.
  * `wal_bytes/1`, `nested/2` - measurements and term generators (random
    terms come from the StreamData generators of
    `Vsmcp.CRDT.HostileTerms`, so failures shrink).
  """

  import Bitwise
  import ExUnit.Assertions
  import ExUnit.Callbacks

  alias Vsmcp.CRDT.ContextStore

  @doc """
  Calls `fun` until it returns a truthy value (which is returned) or until
  `timeout` ms have passed, then fails the test with `message`. `fun` may
  also raise `ExUnit.AssertionError`; the last one is re-raised at the
  deadline.

  Options: `:timeout` (default 10_000), `:interval` (default 10),
  `:message`.
  """
  def eventually(fun, opts \\ []) when is_function(fun, 0) do
    timeout = Keyword.get(opts, :timeout, 10_000)
    interval = Keyword.get(opts, :interval, 10)
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, interval, Keyword.get(opts, :message, "condition not met"))
  end

  defp poll(fun, deadline, interval, message) do
    result =
      try do
        {:ok, fun.()}
      rescue
        e in ExUnit.AssertionError -> {:raised, e, __STACKTRACE__}
      end

    case result do
      {:ok, value} when value not in [nil, false] ->
        value

      other ->
        if System.monotonic_time(:millisecond) >= deadline do
          case other do
            {:raised, e, stack} ->
              reraise e, stack

            {:ok, value} ->
              flunk("#{message} before the deadline (last value: #{inspect(value)})")
          end
        else
          # A poll interval, not a wait for an event: the condition is
          # re-checked until the deadline.
          Process.sleep(interval)
          poll(fun, deadline, interval, message)
        end
    end
  end

  @doc """
  A new, empty directory under `System.tmp_dir!/0`, owned by the calling
  test: it is removed (retrying while a store still closing writes into it)
  after the test.
  """
  def tmp_dir!(prefix \\ "vsmcp_crdt_test") do
    dir =
      Path.join(
        System.tmp_dir!(),
        "#{prefix}-#{System.pid()}-#{System.unique_integer([:positive])}"
      )

    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    on_exit(fn -> rm_rf_eventually(dir) end)
    dir
  end

  @doc """
  The executable and arguments that run `script` in a new BEAM OS process
  with this VM's code path (so it uses the same build of the library).
  """
  def elixir_command(script) do
    elixir = System.find_executable("elixir") || flunk("elixir not on PATH")
    paths = Enum.flat_map(:code.get_path(), fn p -> ["-pa", List.to_string(p)] end)
    {elixir, paths ++ ["-e", script]}
  end

  @doc "Run `script` in a new BEAM (see `elixir_command/1`): `{output, exit_status}`."
  def run_elixir(script) do
    {elixir, args} = elixir_command(script)
    System.cmd(elixir, args, stderr_to_stdout: true)
  end

  @doc "Remove `path` and everything under it, retrying until it is gone."
  def rm_rf_eventually(path) do
    eventually(
      fn ->
        File.rm_rf(path)
        not File.exists?(path)
      end,
      message: "could not remove #{path}"
    )
  end

  @doc """
  Start a store under the test supervisor with `opts` (see
  `Vsmcp.CRDT.ContextStore.start_link/1`); it is not restarted when it
  stops, and is stopped before the test's `on_exit` callbacks.
  """
  def start_store!(opts) do
    spec = Supervisor.child_spec({ContextStore, opts}, id: make_ref(), restart: :temporary)
    start_supervised!(spec)
  end

  @doc """
  Start a store that is linked to nobody (so that killing it does not kill
  the test) and make sure it is killed after the test.
  """
  def start_unlinked_store!(opts) do
    {:ok, pid} = ContextStore.start_link(opts)
    Process.unlink(pid)
    on_exit(fn -> stop_and_wait(pid) end)
    pid
  end

  @doc "Stop `pid` if it is alive and wait until it is gone."
  def stop_and_wait(pid) do
    ref = Process.monitor(pid)

    try do
      GenServer.stop(pid, :normal, 30_000)
    catch
      :exit, _ -> :ok
    end

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      30_000 -> flunk("store #{inspect(pid)} did not stop")
    end
  end

  @doc "Kill `pid` brutally and wait until it is gone."
  def kill_and_wait(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      30_000 -> flunk("process #{inspect(pid)} did not die")
    end
  end

  @doc "Total size in bytes of the RocksDB write-ahead logs (`*.log`) in `dir`."
  def wal_bytes(dir) do
    dir
    |> Path.join("*.log")
    |> Path.wildcard()
    |> Enum.map(fn f ->
      case File.stat(f) do
        {:ok, %{size: s}} -> s
        _ -> 0
      end
    end)
    |> Enum.sum()
  end

  @doc "`leaf` wrapped in `depth` levels of alternating lists, tuples and maps."
  def nested(depth, leaf \\ :leaf) do
    Enum.reduce(1..depth//1, leaf, fn i, acc ->
      case rem(i, 3) do
        0 -> [acc]
        1 -> {acc}
        2 -> %{k: acc}
      end
    end)
  end

  @doc "The canonical (symlink-free) form of an existing path."
  def real_path(path) do
    path
    |> Path.expand()
    |> Path.split()
    |> Enum.reduce(nil, fn
      part, nil ->
        part

      part, acc ->
        candidate = Path.join(acc, part)

        case :file.read_link_all(candidate) do
          {:ok, target} -> Path.expand(to_string(target), acc) |> real_path()
          _ -> candidate
        end
    end)
  end
end
