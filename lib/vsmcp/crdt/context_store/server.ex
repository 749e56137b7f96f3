defmodule Vsmcp.CRDT.ContextStore.Server do
  @moduledoc """
  The process that owns one open store: the GenServer behind every pid of
  `Vsmcp.CRDT.ContextStore`.

  Its one job is the store's lifecycle. It opens the native store (and
  imports a DETS file, see `Vsmcp.CRDT.Storage.DetsImport`) before it
  starts, registers the handle under its pid, runs the store's sync peer
  (`Vsmcp.CRDT.Sync.Peer`, started again if it crashes) and the decay
  timer, and closes the store when it stops, however it stops.

  Reads and writes never pass through it: `Vsmcp.CRDT.ContextStore` hands
  the store's pid to the NIF, which finds the handle in its own registry
  (see "Process model" there). What it answers:

    * `GenServer.call(store, :peer)` - `{:ok, pid}` of the sync peer (the
      sync functions of `Vsmcp.CRDT.ContextStore`, the examples and tests
      of `Vsmcp.CRDT.Sync.Peer`);
    * `GenServer.call(store, :handle)` - `{:ok, handle}`, for fault
      injection in tests;
    * `GenServer.call(store, {:close, timeout})` - stop the peer and close
      the store, retrying refused writes for `timeout` ms
      (`Vsmcp.CRDT.ContextStore.stop/3`, which then stops the process);
    * `:decay` (its own timer) - one demotion pass, with its telemetry;
    * `{:EXIT, peer, reason}` - the peer crashed: a new one is started;
      any other exit signal stops the store.

  ## Cost and invariant

  One process per store, idle but for a decay pass every `:decay_interval`
  ms. The Rust side closes the store whenever this process dies, even by
  `Process.exit(pid, :kill)`; a store is closed once (a second close
  answers the first one's result), and its peer is stopped first, so no
  peer message is merged into a closed store.
  """

  use GenServer

  alias Vsmcp.CRDT.ContextStore.Options
  alias Vsmcp.CRDT.Native
  alias Vsmcp.CRDT.Storage.DetsImport
  alias Vsmcp.CRDT.Sync.Peer
  alias Vsmcp.CRDT.Telemetry

  require Logger

  # How long a closing store retries writes the disk refused.
  @close_deadline 5_000
  # The longest `{:close, timeout}` taken (the NIF's u64 of ms).
  @max_close_ms 0xFFFF_FFFF_FFFF_FFFF

  @doc false
  # The default `timeout` of `Vsmcp.CRDT.ContextStore.stop/3`.
  def close_deadline, do: @close_deadline

  @doc false
  # `Vsmcp.CRDT.ContextStore.start_link/1` (`:link`) and `start/1`
  # (`:nolink`): open the store in the caller, then start the process that
  # owns it; the store is closed again if that process does not start.
  @spec start(keyword(), :link | :nolink) :: GenServer.on_start()
  def start(opts, link) do
    with {:ok, sync} <- Options.sync_opts(opts),
         {:ok, handle} <-
           Telemetry.span(
             [:vsmcp_crdt, :store, :open],
             %{name: opts[:name], topic: sync[:topic]},
             fn -> open(opts) end
           ) do
      gen_opts = if name = opts[:name], do: [name: name], else: []
      opts = Keyword.put(opts, :sync_opts, sync)

      started =
        case link do
          :link -> GenServer.start_link(__MODULE__, {handle, opts}, gen_opts)
          :nolink -> GenServer.start(__MODULE__, {handle, opts}, gen_opts)
        end

      case started do
        {:ok, pid} ->
          {:ok, pid}

        other ->
          Native.store_close(handle, @close_deadline)
          other
      end
    end
  end

  # Resolve the location, open, and import a DETS file if it is one. Two
  # starts on one `dets_file` at once are serialised, so that only one of
  # them imports it (the other then finds the marker).
  defp open(opts) do
    open = fn ->
      with {:ok, config} <- Options.to_native(opts),
           {:ok, handle} <- Native.store_open(config),
           :ok <- import_dets(handle, config) do
        {:ok, handle}
      end
    end

    case dets_file(opts) do
      nil ->
        open.()

      file ->
        # `:global` lock ids are `{resource, requester}`: the file is the
        # resource (other files open at the same time), this process the
        # requester (another start of the same file waits for it).
        lock = {{Vsmcp.CRDT.ContextStore, :dets_file, Path.expand(file)}, self()}
        :global.trans(lock, open, [node()])
    end
  end

  # The import's report is logged by DetsImport.run/2.
  defp import_dets(handle, config) do
    case DetsImport.run(handle, config) do
      {:ok, _report} -> :ok
      other -> other
    end
  end

  defp dets_file(opts) do
    with true <- Keyword.keyword?(opts),
         storage when is_list(storage) <- Keyword.get(opts, :storage_opts, []),
         true <- Keyword.keyword?(storage),
         file when is_binary(file) <- storage[:dets_file] do
      file
    else
      _ -> nil
    end
  end

  # ---------------------------------------------------------------------------
  # Callbacks

  @impl true
  def init({handle, opts}) do
    Process.flag(:trap_exit, true)
    # Registers the handle under this pid and closes the store (in Rust)
    # whenever this process dies, even by `Process.exit(pid, :kill)`.
    Native.store_register(handle, self())
    interval = Options.decay_interval(opts)

    state = %{
      handle: handle,
      decay_interval: interval,
      decay_ref: nil,
      closed: nil,
      sync_opts: opts[:sync_opts]
    }

    case start_peer(state) do
      {:ok, peer} ->
        state = Map.put(state, :peer, peer)
        {:ok, schedule_decay(state)}

      {:error, reason} ->
        Native.store_close(handle, @close_deadline)
        {:stop, reason}
    end
  end

  @impl true
  # Tests only (fault injection takes the handle itself).
  def handle_call(:handle, _from, state), do: {:reply, {:ok, state.handle}, state}
  # The sync peer process (`Vsmcp.CRDT.Sync.Peer`): the sync functions of
  # `Vsmcp.CRDT.ContextStore`, and the examples and tests of that module.
  def handle_call(:peer, _from, state), do: {:reply, {:ok, state.peer}, state}

  def handle_call({:close, timeout}, _from, state)
      when is_integer(timeout) and timeout in 0..@max_close_ms do
    stop_peer(state)
    result = close(state, timeout)
    {:reply, result, %{state | closed: result}}
  end

  # Anything else (a junk call, a close with a timeout that is not a
  # number of ms) is refused; the store goes on.
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  # Nothing is cast to a store; a junk cast is dropped.
  def handle_cast(_request, state), do: {:noreply, state}

  @impl true
  # Only the pass of the current timer runs (and re-arms it): a forged
  # `:decay` message must not add a second timer.
  def handle_info({:decay, ref}, %{decay_ref: ref} = state) do
    before = Native.store_stats(state.handle)
    started = System.monotonic_time()
    Native.store_decay(state.handle)
    decay_telemetry(before, Native.store_stats(state.handle), started)
    {:noreply, schedule_decay(state)}
  end

  # The peer process crashed: the store goes on, with a new one. An exit
  # message naming a peer that is still alive is forged (a real one comes
  # once the peer is dead), and ignored: a second peer must not start.
  def handle_info({:EXIT, peer, reason}, %{peer: peer} = state) when reason != :normal do
    if Process.alive?(peer), do: {:noreply, state}, else: restart_peer(state, reason)
  end

  # Exit signals come from pids and ports; anything else shaped like one is
  # a forged message.
  def handle_info({:EXIT, from, reason}, state) when is_pid(from) or is_port(from),
    do: {:stop, reason, state}

  def handle_info(_msg, state), do: {:noreply, state}

  defp restart_peer(state, reason) do
    Logger.error(
      "Vsmcp.CRDT.ContextStore: sync peer exited (#{inspect(reason)}), restarting it",
      domain: [:vsmcp_crdt, :sync],
      crdt_store: self()
    )

    case start_peer(state) do
      {:ok, peer} -> {:noreply, %{state | peer: peer}}
      {:error, reason} -> {:stop, reason, state}
    end
  end

  @impl true
  def terminate(_reason, state) do
    stop_peer(state)
    # A supervisor shutdown cannot return a value: a failure is only logged.
    close(state, @close_deadline)
    :ok
  end

  # ---------------------------------------------------------------------------
  # The sync peer

  defp start_peer(state) do
    case Peer.start_link(%{store: self(), sync_opts: state.sync_opts}) do
      {:ok, pid} -> {:ok, pid}
      {:error, reason} -> {:error, reason}
    end
  end

  # Synchronously, so that no peer message is being merged while the store
  # closes.
  defp stop_peer(%{peer: peer}) when is_pid(peer) do
    Process.unlink(peer)

    try do
      GenServer.stop(peer, :shutdown, 5_000)
    catch
      # Busy past the deadline: it must not merge into a closed store.
      :exit, _ -> Process.exit(peer, :kill)
    end

    :ok
  end

  defp stop_peer(_), do: :ok

  # ---------------------------------------------------------------------------
  # Closing

  defp close(%{closed: nil, handle: handle}, timeout) do
    Telemetry.span([:vsmcp_crdt, :store, :close], %{store: self()}, fn ->
      close_handle(handle, timeout)
    end)
  end

  defp close(%{closed: result}, _timeout), do: result

  defp close_handle(handle, timeout) do
    case Native.store_close(handle, timeout) do
      :ok ->
        :ok

      {:error, {:unflushed, ids, reason}} = error ->
        Logger.error(
          "Vsmcp.CRDT.ContextStore: acknowledged writes of #{ids} ids were lost " <>
            "at close: #{reason}",
          domain: [:vsmcp_crdt, :store],
          crdt_store: self()
        )

        error

      {:error, _} = error ->
        error
    end
  end

  # ---------------------------------------------------------------------------
  # Decay: demotion passes on a timer

  defp schedule_decay(%{decay_interval: i} = state) when is_integer(i) and i > 0 do
    ref = make_ref()
    Process.send_after(self(), {:decay, ref}, i)
    %{state | decay_ref: ref}
  end

  defp schedule_decay(state), do: state

  defp decay_telemetry(%{} = before, %{} = stats, started) do
    Telemetry.emit(
      [:vsmcp_crdt, :store, :decay],
      %{
        duration: System.monotonic_time() - started,
        hot: stats.hot,
        warm: stats.warm,
        hot_before: before.hot,
        warm_before: before.warm
      },
      %{store: self()}
    )

    if reason = stats.write_error do
      Telemetry.emit([:vsmcp_crdt, :store, :storage_error], %{count: 1}, %{
        store: self(),
        reason: reason
      })
    end
  end

  defp decay_telemetry(_before, _stats, _started), do: :ok
end
