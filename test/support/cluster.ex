defmodule Vsmcp.Test.Cluster do
  @moduledoc """
  Real multi-node clusters: `:peer` nodes on loopback, controlled by the
  calling process, with partitions made and healed on demand. The one
  cluster helper of the tests, `bench/sync.exs` and `bench/demo.exs`.

      peers = Cluster.start(3, tmp_dir: tmp_dir)
      [a, b, c] = peers
      Cluster.partition([a], [b, c])
      Cluster.heal([a], [b, c])
      Cluster.kill9(a)

  ## How the nodes are set up

    * Each node is started with `:peer.start_link/1`, named
      `<prefix><i>_<unique>@127.0.0.1` (long names), with
      `connection: :standard_io`: the test runner drives it over the port's
      stdin/stdout, so **the runner stays out of the cluster** (it need not
      even be distributed) and a partition only involves the peers. The
      peer is linked to the calling process and halts when that process
      exits; in a test, `start/2` also registers an `on_exit` that stops
      the nodes and waits for their OS processes to go.
    * Flags: `-kernel dist_auto_connect never` (nodes connect only through
      `connect/2`, `heal/2` or an explicit `:net_kernel.connect_node/1`, so
      a partition stays a partition however much traffic tries to cross
      it), `-kernel prevent_overlapping_partitions false` (on OTP 25,
      `:global` otherwise answers the first `disconnect_node` of a
      partition by disconnecting the other connections too, tearing down
      the side that should stay connected),
      `-kernel inet_dist_use_interface {127,0,0,1}` (listen on loopback
      only) and one `-setcookie` per cluster.
    * The runner's code path (`:code.get_path/0`) is appended to the peer's,
      so lib/ and test/support/ modules and the NIF load there. Modules
      defined in test files (`*_test.exs`) exist only in the runner: code run
      on a peer must be in lib/ or test/support/ (no anonymous functions
      from test files in `call/4`), or be loaded there with `:load`.
    * Each node's working directory is `<tmp_dir>/<node short name>`
      (`handle.dir`): relative data paths land in the test's temporary
      directory.
    * Then application environment (`:app_env`), an optional
      Phoenix.PubSub server (`:pubsub`), `Application.ensure_all_started(:vsmcp_crdt)`
      and, unless `connect: false`, a full mesh of connections.

  Everything that runs on a peer goes through `:peer.call/5`.

  ## From a script

  The benchmarks run with `mix run` in `MIX_ENV=prod`, where test/support
  is not compiled: a script compiles this file itself and, since modules
  compiled by a script exist only in the VM that ran it, hands them (and
  its own modules that run on the nodes) to `start/2` as `:load`. It gives
  `:tmp_dir`, passes `cleanup: :manual` (there is no test to clean up
  after) and stops the nodes with `stop/1`:

      modules = Code.require_file("../test/support/cluster.ex", __DIR__)
      nodes = Vsmcp.Test.Cluster.start(3, tmp_dir: tmp, cleanup: :manual, load: modules)
      ...
      Vsmcp.Test.Cluster.stop(nodes)
  """

  # The default `:tmp_dir` of a test; a script that compiles this file
  # gives `:tmp_dir` and has no Vsmcp.CRDT.TestHelpers.
  @compile {:no_warn_undefined, Vsmcp.CRDT.TestHelpers}

  alias __MODULE__.Peer

  defmodule Peer do
    @moduledoc """
    A handle on one peer node: the `:peer` control process (`pid`), the
    node name (`node`), its position among the nodes of its
    `Vsmcp.Test.Cluster.start/2` call (`index`, from 0), its working
    directory (`dir`), its OS process id (`os_pid`, a string) and the
    options it was started with (for `Vsmcp.Test.Cluster.restart/2`).
    """
    @enforce_keys [:pid, :node, :index, :dir, :os_pid, :opts]
    defstruct [:pid, :node, :index, :dir, :os_pid, :opts]

    @type t :: %__MODULE__{
            pid: pid(),
            node: node(),
            index: non_neg_integer(),
            dir: Path.t(),
            os_pid: String.t(),
            opts: keyword()
          }
  end

  @call_timeout 10_000

  @doc """
  Starts `n` connected peer nodes and returns their handles.

  Options:

    * `:tmp_dir` - parent of the nodes' working directories (in a test,
      default: a new directory from `Vsmcp.CRDT.TestHelpers.tmp_dir!/1`,
      removed after the test; required with `cleanup: :manual`);
    * `:cleanup` - `:on_exit` (default: the calling test's `on_exit` stops
      the nodes) or `:manual` (the caller stops them with `stop/1`, or they
      halt when it exits);
    * `:load` - `[{module, binary}]` loaded on every node before its
      applications start: modules compiled by a script, which the nodes
      cannot find on the code path;
    * `:app_env` - `[{app, key, value}]` set on every node before the
      applications start, or a function of the `Peer` handle returning such
      a list (for per-node data directories: `handle.dir`). The runner's
      Logger level is copied unless `:logger, :level` is given;
    * `:pubsub` - the name of a `Phoenix.PubSub` server to start on every
      node (none by default);
    * `:connect` - connect the nodes pairwise (default `true`);
    * `:prefix` - node name prefix (default `"vsmcp_peer"`);
    * `:cookie` - distribution cookie (default: random per call);
    * `:boot_timeout` - ms to wait for each node to boot (default 30_000).
  """
  @spec start(pos_integer(), keyword()) :: [Peer.t()]
  def start(n, opts \\ []) when is_integer(n) and n > 0 do
    opts =
      opts
      |> Keyword.put_new(:cleanup, :on_exit)
      |> Keyword.put_new_lazy(:cookie, fn -> random_cookie() end)

    opts = Keyword.put_new_lazy(opts, :tmp_dir, fn -> default_tmp_dir!(opts[:cleanup]) end)
    unique = "#{System.unique_integer([:positive])}_#{System.pid()}"
    prefix = Keyword.get(opts, :prefix, "vsmcp_peer")

    peers = for i <- 1..n, do: start_peer(:"#{prefix}#{i}_#{unique}", i - 1, opts)

    if Keyword.get(opts, :connect, true) do
      for {a, i} <- Enum.with_index(peers), b <- Enum.drop(peers, i + 1), do: connect(a, b)
    end

    peers
  end

  @doc """
  Starts a node again with the name, directory and options of `handle`
  (whose node must be gone: after `kill9/1` or `stop/1`), merged with
  `opts`. Connects it to the handles in `opts[:connect_to]` (default none).
  Returns the new handle.
  """
  @spec restart(Peer.t(), keyword()) :: Peer.t()
  def restart(%Peer{} = handle, opts \\ []) do
    if alive?(handle), do: raise(ArgumentError, "#{handle.node} is still running")

    {connect_to, opts} = Keyword.pop(opts, :connect_to, [])
    [name, _host] = handle.node |> Atom.to_string() |> String.split("@")
    peer = start_peer(String.to_atom(name), handle.index, Keyword.merge(handle.opts, opts))
    Enum.each(connect_to, &connect(peer, &1))
    peer
  end

  @doc "Runs `m.f(a...)` on the node of `handle` and returns its result."
  @spec call(Peer.t(), module(), atom(), list(), timeout()) :: term()
  def call(%Peer{pid: pid}, m, f, a, timeout \\ @call_timeout) do
    :peer.call(pid, m, f, a, timeout)
  end

  @doc "The nodes `handle`'s node is connected to."
  @spec nodes(Peer.t()) :: [node()]
  def nodes(%Peer{} = handle), do: call(handle, :erlang, :nodes, [])

  @doc """
  Connects the nodes of `a` and `b` (from `a`) and waits until each lists
  the other.
  """
  @spec connect(Peer.t(), Peer.t()) :: :ok
  def connect(%Peer{} = a, %Peer{} = b) do
    eventually(fn -> call(a, :net_kernel, :connect_node, [b.node]) end)
    eventually(fn -> b.node in nodes(a) and a.node in nodes(b) end)
    :ok
  end

  @doc """
  Disconnects every node of `group_a` from every node of `group_b` (from
  the nodes themselves) and waits until no node lists one across the cut.
  Connections within each group stay.
  """
  @spec partition([Peer.t()], [Peer.t()]) :: :ok
  def partition(group_a, group_b) do
    for a <- group_a, b <- group_b, do: call(a, :erlang, :disconnect_node, [b.node])

    eventually(fn ->
      Enum.all?(group_a, fn a -> disjoint?(nodes(a), group_b) end) and
        Enum.all?(group_b, fn b -> disjoint?(nodes(b), group_a) end)
    end)

    :ok
  end

  @doc "Connects every node of `group_a` to every node of `group_b`."
  @spec heal([Peer.t()], [Peer.t()]) :: :ok
  def heal(group_a, group_b) do
    for a <- group_a, b <- group_b, do: connect(a, b)
    :ok
  end

  @doc """
  Stops the nodes (`:peer.stop/1`, which halts them) and waits until their
  OS processes are gone. Handles of nodes already gone are skipped.
  """
  @spec stop(Peer.t() | [Peer.t()]) :: :ok
  def stop(handles) do
    handles = List.wrap(handles)

    for %Peer{pid: pid} <- handles do
      try do
        :peer.stop(pid)
      catch
        # Already stopped, or its node died under it.
        :exit, _ -> :ok
      end
    end

    wait_os_exit(handles)
  end

  @doc "The node's OS process id, as a string."
  @spec os_pid(Peer.t()) :: String.t()
  def os_pid(%Peer{os_pid: os_pid}), do: os_pid

  @doc """
  Kills the node's OS process with SIGKILL (no cleanup runs on it) and
  waits until the process and its `:peer` control process are gone. The
  other nodes see a `nodedown`.
  """
  @spec kill9(Peer.t()) :: :ok
  def kill9(%Peer{} = handle) do
    {_, 0} = System.cmd("kill", ["-9", handle.os_pid])
    wait_os_exit([handle])
    eventually(fn -> not Process.alive?(handle.pid) end)
    :ok
  end

  @doc "Whether the node's OS process is running."
  @spec alive?(Peer.t()) :: boolean()
  def alive?(%Peer{os_pid: os_pid}) do
    match?({_, 0}, System.cmd("kill", ["-0", os_pid], stderr_to_stdout: true))
  end

  @doc """
  Calls `fun` every 20 ms until it returns a truthy value, which is
  returned. After `timeout_ms` raises, with the last value, or re-raises
  the last exception `fun` raised.
  """
  @spec eventually((() -> term()), non_neg_integer()) :: term()
  def eventually(fun, timeout_ms \\ 10_000) when is_function(fun, 0) do
    poll(fun, System.monotonic_time(:millisecond) + timeout_ms, timeout_ms)
  end

  defp poll(fun, deadline, timeout_ms) do
    result =
      try do
        {:ok, fun.()}
      rescue
        e -> {:raised, e, __STACKTRACE__}
      catch
        :exit, reason -> {:exited, reason}
      end

    case result do
      {:ok, value} when value not in [nil, false] ->
        value

      _ ->
        if System.monotonic_time(:millisecond) >= deadline do
          case result do
            {:raised, e, stack} ->
              reraise e, stack

            {:exited, reason} ->
              raise "eventually: still exiting after #{timeout_ms} ms: #{inspect(reason)}"

            {:ok, value} ->
              raise ExUnit.AssertionError,
                message: "eventually: still #{inspect(value)} after #{timeout_ms} ms"
          end
        else
          # A poll interval, not a wait for an event: the condition is
          # re-checked until the deadline.
          Process.sleep(20)
          poll(fun, deadline, timeout_ms)
        end
    end
  end

  @doc false
  # Runs on a peer (through call/4): a Phoenix.PubSub server that outlives
  # the short-lived process :peer runs each call in.
  def start_pubsub(name) do
    {:ok, _} = Application.ensure_all_started(:phoenix_pubsub)
    {:ok, sup} = Supervisor.start_link([{Phoenix.PubSub, name: name}], strategy: :one_for_one)
    # Unlinked, the supervisor lives on when the calling process exits.
    Process.unlink(sup)
    {:ok, sup}
  end

  defp start_peer(name, index, opts) do
    {:ok, pid, node} =
      :peer.start_link(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        wait_boot: Keyword.get(opts, :boot_timeout, 30_000),
        args: [
          ~c"-setcookie",
          String.to_charlist(Keyword.fetch!(opts, :cookie)),
          ~c"-kernel",
          ~c"dist_auto_connect",
          ~c"never",
          ~c"-kernel",
          ~c"prevent_overlapping_partitions",
          ~c"false",
          ~c"-kernel",
          ~c"inet_dist_use_interface",
          ~c"{127,0,0,1}"
        ]
      })

    dir = Path.join(Keyword.fetch!(opts, :tmp_dir), name |> Atom.to_string())
    File.mkdir_p!(dir)
    os_pid = :peer.call(pid, :os, :getpid, []) |> List.to_string()
    peer = %Peer{pid: pid, node: node, index: index, dir: dir, os_pid: os_pid, opts: opts}
    if Keyword.fetch!(opts, :cleanup) == :on_exit, do: register_cleanup(peer)

    :ok = call(peer, :code, :add_pathsz, [:code.get_path()])

    for {module, binary} <- Keyword.get(opts, :load, []) do
      {:module, ^module} = call(peer, :code, :load_binary, [module, ~c"nofile", binary])
    end

    :ok = call(peer, :file, :set_cwd, [String.to_charlist(dir)])

    for {app, key, value} <- app_env(peer, opts) do
      :ok = call(peer, :application, :set_env, [app, key, value, [persistent: true]])
    end

    {:ok, _} = call(peer, Application, :ensure_all_started, [:vsmcp_crdt])

    if pubsub = Keyword.get(opts, :pubsub) do
      {:ok, _} = call(peer, __MODULE__, :start_pubsub, [pubsub])
    end

    peer
  end

  defp default_tmp_dir!(:on_exit), do: Vsmcp.CRDT.TestHelpers.tmp_dir!("vsmcp_cluster")

  defp default_tmp_dir!(:manual),
    do: raise(ArgumentError, "Vsmcp.Test.Cluster.start/2: cleanup: :manual needs :tmp_dir")

  defp app_env(peer, opts) do
    env =
      case Keyword.get(opts, :app_env, []) do
        fun when is_function(fun, 1) -> fun.(peer)
        list when is_list(list) -> list
      end

    if Enum.any?(env, &match?({:logger, :level, _}, &1)),
      do: env,
      else: [{:logger, :level, Logger.level()} | env]
  end

  # The link stops the node when the test process exits; this also waits
  # for the OS process, so the test's tmp_dir is removed (by an on_exit
  # registered earlier, hence run later) only once nothing writes into it.
  defp register_cleanup(peer) do
    ExUnit.Callbacks.on_exit(fn ->
      try do
        stop(peer)
      rescue
        # Still running after the wait: it cannot be left behind.
        ExUnit.AssertionError -> kill9(peer)
      end
    end)
  end

  defp wait_os_exit(handles) do
    eventually(fn -> not Enum.any?(handles, &alive?/1) end, 15_000)
    :ok
  end

  defp disjoint?(nodes, group), do: not Enum.any?(group, &(&1.node in nodes))

  defp random_cookie do
    "vsmcp_test_" <> Base.url_encode64(:crypto.strong_rand_bytes(12), padding: false)
  end
end
