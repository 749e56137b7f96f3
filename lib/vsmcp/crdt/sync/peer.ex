defmodule Vsmcp.CRDT.Sync.Peer do
  @moduledoc """
  One per store: drives the store's sync engine (in Rust) and delivers
  change notifications. Started and linked by the store process
  (`Vsmcp.CRDT.ContextStore.Server`).

  The engine makes every protocol decision; this process only:

    * joins the cluster topic on the transport (`Vsmcp.CRDT.Sync.Transport`)
      under the store's replica key;
    * every `:tick_interval` ms (5) hands the store's local changes to the
      engine and sends what it returns (delta-intervals, retransmissions);
    * every `:heartbeat_interval` ms (1000) joins the topic again (a no-op
      while joined; a transport that lost its members, such as a restarted
      `:pg` scope, gets them back) and broadcasts a hello: discovery,
      liveness, wire versions and the digest root (anti-entropy starts when
      roots differ);
    * hands every message received to the engine, which merges it into the
      store, and sends the replies;
    * answers `sync/2` once every peer that is up answered a digest round;
    * logs refused peer input once per peer and kind per minute, and counts
      it (`info/1`);
    * notifies subscribers (`subscribe/3`).

  Without a transport (a local store) it runs only while someone is
  subscribed, for local change notifications.

  Applications use the functions of `Vsmcp.CRDT.ContextStore`
  (`subscribe/3`, `sync/2`, `sync_info/1`, ...), which find a store's peer
  process and call this module. The examples here call it directly: a
  store answers `GenServer.call(store, :peer)` with `{:ok, peer}`. Two
  stores of one node on one topic sync with each other as stores of two
  nodes do, so the examples of sync use two stores.

  ## Notifications

  A subscriber receives `{:crdt_changed, store, id, origin}` with `store`
  the store's pid and `origin` `:local` or `:remote`: at least one message
  per changed id per tick (changes of one id within a tick are coalesced).
  Remote ids naming atoms that do not exist on this node are not reported
  (receiving never creates atoms).

  ## Cost and invariant

  One process per store; the work of a tick (every 5 ms) is proportional
  to the local changes since the last one, and a heartbeat is one small
  broadcast per second. The engine implements delta-interval
  anti-entropy (Almeida, Shoker and Baquero 2018, Algorithm 2): each
  replica ships the deltas a peer has not acknowledged and retransmits
  until it does, with digest rounds as the fallback, so all replicas that stay connected long enough
  converge to the same state whatever the transport drops, duplicates or
  reorders.
  """

  use GenServer
  require Logger

  alias Vsmcp.CRDT.Native
  alias Vsmcp.CRDT.Sync.Transport
  alias Vsmcp.CRDT.Telemetry

  @tick 5
  @heartbeat 1_000
  @sync_timeout 5_000
  @log_every_ms 60_000
  # Senders whose last refusal was logged within the minute, at most.
  @max_logged 1_024

  @doc false
  def start_link(args), do: GenServer.start_link(__MODULE__, args)

  @doc """
  Subscribe `pid` to changes of `ids` (a list) or of every id (`:all`);
  subscribing again replaces its list. See "Notifications".

      iex> alias Vsmcp.CRDT.{ContextStore, Sync.Peer}
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> {:ok, peer} = GenServer.call(s, :peer)
      iex> :ok = ContextStore.create(s, :views, :g_counter)
      iex> :ok = ContextStore.create(s, :clicks, :g_counter)
      iex> Peer.subscribe(peer, self(), [:views])
      :ok
      iex> {:ok, 1} = ContextStore.increment(s, :clicks)
      iex> {:ok, 1} = ContextStore.increment(s, :views)
      iex> receive do {:crdt_changed, ^s, id, origin} -> {id, origin} after 2_000 -> :timeout end
      {:views, :local}
      iex> ContextStore.stop(s)
      :ok
  """
  @spec subscribe(GenServer.server(), pid(), [term()] | :all) :: :ok | {:error, term()}
  def subscribe(peer, pid, ids) when is_pid(pid) and (ids == :all or is_list(ids)),
    do: GenServer.call(peer, {:subscribe, pid, ids})

  @doc """
  Undo `subscribe/3` for `pid`: once this returns, nothing more is sent
  to it. A local store records no changes while nobody is subscribed, so
  the change of `:views` below is never reported:

      iex> alias Vsmcp.CRDT.{ContextStore, Sync.Peer}
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = ContextStore.start_link(storage_opts: [data_dir: dir])
      iex> {:ok, peer} = GenServer.call(s, :peer)
      iex> :ok = ContextStore.create(s, :views, :g_counter)
      iex> :ok = ContextStore.create(s, :clicks, :g_counter)
      iex> :ok = Peer.subscribe(peer, self(), :all)
      iex> Peer.unsubscribe(peer, self())
      :ok
      iex> {:ok, 1} = ContextStore.increment(s, :views)
      iex> :ok = Peer.subscribe(peer, self(), :all)
      iex> {:ok, 1} = ContextStore.increment(s, :clicks)
      iex> receive do {:crdt_changed, ^s, id, _} -> id after 2_000 -> :timeout end
      :clicks
      iex> ContextStore.stop(s)
      :ok
  """
  @spec unsubscribe(GenServer.server(), pid()) :: :ok
  def unsubscribe(peer, pid), do: GenServer.call(peer, {:unsubscribe, pid})

  @doc """
  Ship local changes, then run a digest round with every peer that is up.
  `:ok` once each answered, else `{:error, {:timeout, peers}}` naming the
  silent peers' labels. Over a transport that keeps the order of one
  sender's messages (both built-in ones do while the nodes stay
  connected), a peer answers only after it has merged what we sent
  before, so once `b` below synced, `a` holds `b`'s change (the stores
  first wait until each has met the other, a few milliseconds):

      iex> alias Vsmcp.CRDT.{ContextStore, Sync.Peer}
      iex> tmp = fn -> Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}") end
      iex> sync = [topic: "doc:Peer.sync"]
      iex> {:ok, a} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {:ok, b} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {{:ok, peer_a}, {:ok, peer_b}} = {GenServer.call(a, :peer), GenServer.call(b, :peer)}
      iex> up? = fn peer, other -> Enum.any?(Peer.info(peer).peers, &(&1.key == Peer.info(other).replica and &1.up)) end
      iex> Stream.interval(5) |> Stream.take(400) |> Enum.any?(fn _ -> up?.(peer_b, peer_a) and up?.(peer_a, peer_b) end)
      true
      iex> :ok = ContextStore.create(b, :views, :g_counter)
      iex> {:ok, 3} = ContextStore.increment(b, :views, 3)
      iex> Peer.sync(peer_b)
      :ok
      iex> ContextStore.get(a, :views)
      {:ok, 3}
      iex> Peer.sync(peer_b, -1)
      {:error, {:invalid_timeout, -1}}
      iex> {ContextStore.stop(a), ContextStore.stop(b)}
      {:ok, :ok}
  """
  @spec sync(GenServer.server(), timeout()) :: :ok | {:error, term()}
  def sync(peer, timeout \\ @sync_timeout)

  def sync(peer, timeout)
      when timeout == :infinity or (is_integer(timeout) and timeout in 0..4_294_966_295) do
    call_timeout = if timeout == :infinity, do: :infinity, else: timeout + 1_000
    GenServer.call(peer, {:sync, timeout}, call_timeout)
  catch
    :exit, {:timeout, _} -> {:error, {:timeout, []}}
  end

  def sync(_peer, timeout), do: {:error, {:invalid_timeout, timeout}}

  @doc """
  Forget a replica (a key from `info/1`'s peers) for good: it is no
  longer listed nor waited for, and its messages are refused from then
  on. `{:error, :invalid_replica}` for a string that is not a replica
  key, `{:error, :not_syncing}` when the store does not sync.

      iex> alias Vsmcp.CRDT.{ContextStore, Sync.Peer}
      iex> tmp = fn -> Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}") end
      iex> sync = [topic: "doc:Peer.forget_replica"]
      iex> {:ok, a} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {:ok, b} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {{:ok, peer_a}, {:ok, peer_b}} = {GenServer.call(a, :peer), GenServer.call(b, :peer)}
      iex> key_b = Peer.info(peer_b).replica
      iex> met_b? = fn -> Enum.any?(Peer.info(peer_a).peers, &(&1.key == key_b)) end
      iex> Stream.interval(5) |> Stream.take(200) |> Enum.any?(fn _ -> met_b?.() end)
      true
      iex> :ok = ContextStore.stop(b)
      iex> Peer.forget_replica(peer_a, key_b)
      :ok
      iex> Peer.info(peer_a).peers
      []
      iex> Peer.forget_replica(peer_a, "not a replica key")
      {:error, :invalid_replica}
      iex> ContextStore.stop(a)
      :ok
  """
  @spec forget_replica(GenServer.server(), String.t()) :: :ok | {:error, term()}
  def forget_replica(peer, key), do: GenServer.call(peer, {:forget, key})

  @doc """
  Sync state: transport, topic, this store's replica key, counters,
  rejections by reason, log size, and per peer: `key`, `node`, `up`,
  `wire_version`, `last_contact_ms_ago`, `ack_lag` (our deltas it has not
  acknowledged), `msgs_sent`, `bytes_sent`, `msgs_received`,
  `bytes_received`, `deltas_sent`, `entries_received` and `rejected` (by
  reason).

      iex> alias Vsmcp.CRDT.{ContextStore, Sync.Peer}
      iex> tmp = fn -> Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}") end
      iex> sync = [topic: "doc:Peer.info"]
      iex> {:ok, a} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {:ok, b} = ContextStore.start_link(storage_opts: [data_dir: tmp.()], sync_opts: sync)
      iex> {{:ok, peer_a}, {:ok, peer_b}} = {GenServer.call(a, :peer), GenServer.call(b, :peer)}
      iex> key_b = Peer.info(peer_b).replica
      iex> met_b? = fn -> Enum.any?(Peer.info(peer_a).peers, &(&1.key == key_b)) end
      iex> Stream.interval(5) |> Stream.take(200) |> Enum.any?(fn _ -> met_b?.() end)
      true
      iex> info = Peer.info(peer_a)
      iex> {info.enabled, info.topic, info.transport}
      {true, "doc:Peer.info", Vsmcp.CRDT.Sync.Transport.PG}
      iex> for p <- info.peers, do: Map.take(p, [:key, :node, :up])
      [%{key: key_b, node: to_string(node()), up: true}]
      iex> {ContextStore.stop(a), ContextStore.stop(b)}
      {:ok, :ok}

  A store that does not sync answers `%{enabled: false, ...}`.
  """
  @spec info(GenServer.server()) :: map()
  def info(peer), do: GenServer.call(peer, :info)

  # ---------------------------------------------------------------------------

  @impl true
  def init(%{store: store, sync_opts: opts}) do
    state = %{
      store: store,
      opts: opts,
      engine: nil,
      key: nil,
      transport: nil,
      topic: Keyword.get(opts, :topic),
      tick: Keyword.get(opts, :tick_interval, @tick),
      heartbeat: Keyword.get(opts, :heartbeat_interval, @heartbeat),
      subs: %{},
      waiters: [],
      labels: %{},
      logged: %{},
      # The refs of the pending `:tick` and `:heartbeat` timers: only those
      # messages run (and re-arm) them, so forged ones add no timer.
      tick_ref: nil,
      heartbeat_ref: nil
    }

    if Keyword.get(opts, :enabled, false) and is_binary(state.topic) do
      with {:ok, {mod, topts}} <- Transport.select(opts),
           {:ok, tstate} <- mod.start(topts),
           {:ok, state} <- start_engine(state) do
        :ok = mod.join(tstate, state.topic, state.key)

        Logger.info(
          "Vsmcp.CRDT sync: store #{inspect(store)} on topic #{inspect(state.topic)} " <>
            "over #{inspect(mod)}",
          log_meta(state)
        )

        state = %{state | transport: {mod, tstate}}
        {:ok, state |> schedule_heartbeat(0) |> schedule_tick()}
      else
        {:error, reason} -> {:stop, {:sync_start_failed, reason}}
      end
    else
      {:ok, state}
    end
  end

  defp start_engine(%{engine: nil} = state) do
    attrs = to_string(node())

    opts =
      %{attrs: attrs}
      |> put_opt(:versions, state.opts[:wire_versions])
      |> put_opt(:retransmit_ms, state.opts[:retransmit_interval])
      |> put_opt(:down_after_ms, state.opts[:down_after])
      |> put_opt(:max_log_bytes, state.opts[:max_log_bytes])
      |> put_opt(:collect_after_ms, state.opts[:collect_after])
      |> put_opt(:member_expiry_ms, state.opts[:member_expiry])
      |> put_auth(state.opts[:secret], state.topic)

    case Native.sync_start(state.store, opts) do
      {:ok, engine, key} -> {:ok, %{state | engine: engine, key: key}}
      {:error, reason} -> {:error, reason}
    end
  end

  defp start_engine(state), do: {:ok, state}

  defp put_opt(map, _k, nil), do: map
  defp put_opt(map, k, v), do: Map.put(map, k, v)

  # The secrets travel wrapped in a function (`Options.sync_opts/1`), so a
  # crash report of this process shows no secret.
  defp put_auth(map, nil, _topic), do: map

  defp put_auth(map, secrets, topic) when is_function(secrets, 0),
    do: Map.merge(map, %{secrets: secrets.(), auth_context: topic})

  @impl true
  def handle_info({:tick, ref}, %{tick_ref: ref} = state) when is_reference(ref) do
    state = %{state | tick_ref: nil}

    case state.engine && Native.sync_tick(state.engine, now(), want_changes?(state)) do
      {:ok, {outs, events}} ->
        state = state |> send_outs(outs) |> handle_events(events)
        {:noreply, schedule_tick(state)}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:heartbeat, ref}, %{heartbeat_ref: ref, transport: {mod, t}} = state) do
    state = schedule_heartbeat(state, state.heartbeat)
    # Join again (a no-op while joined): a `:pg` scope that crashed and was
    # restarted (junk sent to it makes OTP's `:pg` crash) has forgotten us.
    :ok = mod.join(t, state.topic, state.key)

    # A heartbeat's hello is a span: the engine brings its digest up to
    # date (a step of the first build of a large store's digest included)
    # and builds the hello.
    hello =
      Telemetry.span(
        [:vsmcp_crdt, :sync, :heartbeat],
        %{store: state.store, topic: state.topic},
        fn ->
          with {:ok, {bytes, events}} <- Native.sync_hello(state.engine, want_changes?(state)) do
            mod.broadcast(t, state.topic, bytes)
            {:ok, events}
          end
        end
      )

    case hello do
      {:ok, events} -> {:noreply, handle_events(state, events)}
      {:error, _} -> {:noreply, state}
    end
  end

  def handle_info({:vsmcp_crdt_sync, topic, payload}, %{topic: topic, engine: e} = state)
      when is_binary(payload) and e != nil do
    case Native.sync_receive(e, payload, now(), want_changes?(state)) do
      {:ok, {outs, events}} -> {:noreply, state |> send_outs(outs) |> handle_events(events)}
      {:error, _} -> {:noreply, state}
    end
  end

  def handle_info({:sync_timeout, ref}, state) do
    {expired, waiting} = Enum.split_with(state.waiters, fn w -> w.ref == ref end)

    for w <- expired do
      labels = Enum.map(w.pending, &Map.get(state.labels, &1, &1))
      GenServer.reply(w.from, {:error, {:timeout, Enum.sort(labels)}})
      round_done(state, w, :timeout)
    end

    {:noreply, %{state | waiters: waiting}}
  end

  def handle_info({:DOWN, _ref, :process, pid, _}, state) do
    {:noreply, %{state | subs: Map.delete(state.subs, pid)} |> maybe_stop_local()}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def handle_call({:subscribe, pid, ids}, _from, state)
      when is_pid(pid) and (ids == :all or (is_list(ids) and length(ids) >= 0)) do
    with {:ok, state} <- start_engine(state) do
      unless Map.has_key?(state.subs, pid), do: Process.monitor(pid)
      filter = if ids == :all, do: :all, else: MapSet.new(List.wrap(ids))
      {:reply, :ok, schedule_tick(%{state | subs: Map.put(state.subs, pid, filter)})}
    else
      error -> {:reply, error, state}
    end
  end

  def handle_call({:unsubscribe, pid}, _from, state) do
    {:reply, :ok, %{state | subs: Map.delete(state.subs, pid)} |> maybe_stop_local()}
  end

  def handle_call({:sync, timeout}, from, %{transport: {_, _}} = state)
      when timeout == :infinity or (is_integer(timeout) and timeout in 0..4_294_967_295) do
    _ = Native.store_flush(state.store)

    case Native.sync_round(state.engine, now(), want_changes?(state)) do
      {:ok, {[], outs, events}} ->
        round_done(state, round_start(state, from, [], timeout), :ok)
        {:reply, :ok, state |> send_outs(outs) |> handle_events(events)}

      {:ok, {peers, outs, events}} ->
        state = state |> send_outs(outs) |> handle_events(events)
        w = round_start(state, from, peers, timeout)
        {:noreply, %{state | waiters: [w | state.waiters]}}

      {:error, _} = error ->
        {:reply, error, state}
    end
  end

  def handle_call({:sync, _timeout}, _from, %{transport: nil} = state) do
    {:reply, Native.store_flush(state.store), state}
  end

  def handle_call({:forget, key}, _from, %{engine: e} = state)
      when e != nil and is_binary(key) do
    case Native.sync_forget(e, key) do
      {:ok, events} -> {:reply, :ok, handle_events(state, events)}
      error -> {:reply, error, state}
    end
  end

  def handle_call({:forget, key}, _from, %{engine: nil} = state) when is_binary(key),
    do: {:reply, {:error, :not_syncing}, state}

  def handle_call({:forget, key}, _from, state),
    do: {:reply, {:error, {:invalid_replica, key}}, state}

  def handle_call(:info, _from, state) do
    base = %{
      enabled: state.transport != nil,
      topic: state.topic,
      transport: transport_name(state.transport),
      transport_stats: transport_stats(state.transport)
    }

    info =
      case state.engine && Native.sync_info(state.engine) do
        {:ok, raw} ->
          t = now()

          peers =
            for p <- raw.peers do
              p
              |> Map.delete(:last_seen_ms)
              |> Map.put(:last_contact_ms_ago, max(t - p.last_seen_ms, 0))
            end

          Map.merge(base, %{raw | peers: peers})

        _ ->
          base
      end

    {:reply, info, state}
  end

  # Anything else (a junk call, or a known one with arguments of the
  # wrong shape) is refused; the peer goes on.
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  # Nothing is cast to a peer; a junk cast is dropped.
  def handle_cast(_request, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.engine, do: Native.sync_stop(state.engine)

    case state.transport do
      {mod, t} -> mod.leave(t, state.topic, state.key)
      nil -> :ok
    end

    :ok
  end

  # ---------------------------------------------------------------------------

  defp transport_stats({mod, t}) do
    if function_exported?(mod, :stats, 1), do: mod.stats(t), else: nil
  end

  defp transport_stats(nil), do: nil

  defp transport_name(nil), do: nil
  defp transport_name({mod, _}), do: mod

  # Monotonic ms since the VM started (the engine wants a u64).
  defp now do
    start = System.convert_time_unit(:erlang.system_info(:start_time), :native, :millisecond)
    System.monotonic_time(:millisecond) - start
  end

  defp want_changes?(state), do: state.subs != %{}

  defp schedule_tick(%{tick_ref: ref} = state) when ref != nil, do: state

  defp schedule_tick(state) do
    if state.transport != nil or state.subs != %{} do
      ref = make_ref()
      Process.send_after(self(), {:tick, ref}, state.tick)
      %{state | tick_ref: ref}
    else
      state
    end
  end

  defp schedule_heartbeat(state, after_ms) do
    ref = make_ref()
    Process.send_after(self(), {:heartbeat, ref}, after_ms)
    %{state | heartbeat_ref: ref}
  end

  # A local store with no subscriber left stops recording changes.
  defp maybe_stop_local(%{transport: nil, subs: subs, engine: e} = state)
       when subs == %{} and e != nil do
    Native.sync_stop(e)
    %{state | engine: nil}
  end

  defp maybe_stop_local(state), do: state

  defp send_outs(state, []), do: state

  defp send_outs(%{transport: {mod, t}} = state, outs) do
    sent =
      Enum.reduce(outs, 0, fn {to, bytes}, sum ->
        case to do
          nil -> mod.broadcast(t, state.topic, bytes)
          key -> mod.send_to(t, state.topic, key, bytes)
        end

        sum + byte_size(bytes)
      end)

    Telemetry.emit(
      [:vsmcp_crdt, :sync, :sent],
      %{messages: length(outs), bytes: sent},
      %{store: state.store, topic: state.topic}
    )

    state
  end

  defp send_outs(state, _outs), do: state

  defp handle_events(state, []), do: state

  defp handle_events(state, events) do
    Enum.reduce(events, state, &event/2)
  end

  defp event({:changed, id, origin}, state) do
    for {pid, filter} <- state.subs, filter == :all or MapSet.member?(filter, id) do
      send(pid, {:crdt_changed, state.store, id, origin})
    end

    state
  end

  defp event({:peer_up, key, label}, state) do
    Logger.debug(
      "Vsmcp.CRDT sync: peer #{label} (#{key}) up on #{state.topic}",
      log_meta(state, crdt_peer: key)
    )

    Telemetry.emit([:vsmcp_crdt, :sync, :peer_up], %{count: 1}, %{
      store: state.store,
      topic: state.topic,
      peer: key,
      node: label
    })

    %{state | labels: Map.put(state.labels, key, label)}
  end

  defp event({:peer_down, key}, state) do
    Logger.debug(
      "Vsmcp.CRDT sync: peer #{key} down on #{state.topic}",
      log_meta(state, crdt_peer: key)
    )

    Telemetry.emit([:vsmcp_crdt, :sync, :peer_down], %{count: 1}, %{
      store: state.store,
      topic: state.topic,
      peer: key
    })

    # The label goes with the session: every restart of a peer (and every
    # forged hello) is a new key, so keeping them would grow for ever.
    %{state | labels: Map.delete(state.labels, key)}
  end

  defp event({:answered, key}, state), do: answered(state, key)

  defp event({:merged, entries, bytes}, state) do
    Telemetry.emit(
      [:vsmcp_crdt, :sync, :merged],
      %{entries: entries, bytes: bytes},
      %{store: state.store, topic: state.topic}
    )

    state
  end

  defp event({:collected, tombstones, elements}, state) do
    Telemetry.emit(
      [:vsmcp_crdt, :sync, :collected],
      %{tombstones: tombstones, elements: elements},
      %{store: state.store, topic: state.topic}
    )

    state
  end

  defp event({:rejected, who, kind, detail}, state) do
    k = {who, kind}
    t = now()

    Telemetry.emit([:vsmcp_crdt, :sync, :rejected], %{count: 1}, %{
      store: state.store,
      topic: state.topic,
      peer: who,
      reason: kind
    })

    case state.logged do
      %{^k => last} when t - last < @log_every_ms ->
        state

      logged ->
        # Forget old entries, so forged senders cannot grow the map for ever.
        logged = Map.reject(logged, fn {_, at} -> t - at >= @log_every_ms end)
        log_refusal(%{state | logged: logged}, k, t, detail)
    end
  end

  defp event(_other, state), do: state

  # Beyond `@max_logged` senders within a minute (forged ones), refusals
  # are counted but not logged.
  defp log_refusal(%{logged: logged} = state, _k, _t, _detail)
       when map_size(logged) >= @max_logged,
       do: state

  defp log_refusal(state, {who, kind} = k, t, detail) do
    label = if who, do: Map.get(state.labels, who, who), else: "unknown sender"

    Logger.warning(
      "Vsmcp.CRDT sync: refused #{kind} from #{label} on #{state.topic}: #{detail} " <>
        "(further ones counted, logged at most once a minute)",
      log_meta(state, crdt_peer: who, crdt_reject: kind)
    )

    %{state | logged: Map.put(state.logged, k, t)}
  end

  # Logger metadata of this peer's lines: the `:domain` lets a handler
  # filter every sync line (`[:vsmcp_crdt, :sync]`), the rest says which
  # store, topic and peer a line is about.
  defp log_meta(state, more \\ []) do
    [domain: [:vsmcp_crdt, :sync], crdt_store: state.store, crdt_topic: state.topic] ++ more
  end

  # A peer answered: waiters need no answer from it any more.
  defp answered(state, key) do
    {done, waiting} =
      state.waiters
      |> Enum.map(fn w -> %{w | pending: MapSet.delete(w.pending, key)} end)
      |> Enum.split_with(fn w -> MapSet.size(w.pending) == 0 end)

    for w <- done do
      GenServer.reply(w.from, :ok)
      round_done(state, w, :ok)
    end

    %{state | waiters: waiting}
  end

  # A round of `sync/2` is a span, `[:vsmcp_crdt, :sync, :round, :start |
  # :stop]`, in `:telemetry.span/3`'s shape; it ends when every peer
  # answered or at the timeout.
  defp round_start(state, from, peers, timeout) do
    ref = make_ref()

    if timeout != :infinity and peers != [],
      do: Process.send_after(self(), {:sync_timeout, ref}, timeout)

    started = System.monotonic_time()

    Telemetry.emit(
      [:vsmcp_crdt, :sync, :round, :start],
      %{system_time: System.system_time(), monotonic_time: started, peers: length(peers)},
      %{store: state.store, topic: state.topic, telemetry_span_context: ref}
    )

    %{from: from, ref: ref, pending: MapSet.new(peers), peers: length(peers), started: started}
  end

  defp round_done(state, w, result) do
    stopped = System.monotonic_time()

    Telemetry.emit(
      [:vsmcp_crdt, :sync, :round, :stop],
      %{duration: stopped - w.started, monotonic_time: stopped, peers: w.peers},
      %{store: state.store, topic: state.topic, result: result, telemetry_span_context: w.ref}
    )
  end
end
