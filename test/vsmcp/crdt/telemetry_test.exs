defmodule Vsmcp.CRDT.TelemetryTest do
  # Telemetry events of the store and of sync, observed with real handlers.
  use ExUnit.Case, async: false

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.TestHelpers

  doctest Vsmcp.CRDT.Telemetry

  setup do
    {:ok, _} = Application.ensure_all_started(:telemetry)
    parent = self()
    id = "test-#{System.unique_integer([:positive])}"

    events = [
      [:vsmcp_crdt, :store, :decay],
      [:vsmcp_crdt, :sync, :rejected],
      [:vsmcp_crdt, :sync, :round, :start],
      [:vsmcp_crdt, :sync, :round, :stop]
    ]

    :telemetry.attach_many(id, events, fn e, m, md, _ -> send(parent, {e, m, md}) end, nil)
    on_exit(fn -> :telemetry.detach(id) end)
    dir = TestHelpers.tmp_dir!("telemetry")
    on_exit(fn -> File.rm_rf(dir) end)
    %{dir: dir}
  end

  test "decay passes and refused peer input are events", %{dir: dir} do
    topic = "telemetry-#{System.unique_integer([:positive])}"

    {:ok, store} =
      ContextStore.start_link(
        storage_opts: [data_dir: dir, decay_interval: 50],
        sync_opts: [topic: topic]
      )

    :ok = ContextStore.create(store, :x, :g_counter)

    assert_receive {[:vsmcp_crdt, :store, :decay], %{hot: 1, hot_before: 1}, %{store: ^store}},
                   2_000

    {:ok, peer} = GenServer.call(store, :peer)
    send(peer, {:vsmcp_crdt_sync, topic, "junk"})
    assert_receive {[:vsmcp_crdt, :sync, :rejected], %{count: 1}, %{reason: :malformed}}, 2_000

    # A sync round is a span (here with no peer to wait for).
    :ok = ContextStore.sync(store)

    assert_received {[:vsmcp_crdt, :sync, :round, :start], %{monotonic_time: _, peers: 0},
                     %{store: ^store, topic: ^topic, telemetry_span_context: ref}}

    assert_received {[:vsmcp_crdt, :sync, :round, :stop], %{duration: d, peers: 0},
                     %{result: :ok, telemetry_span_context: ^ref}}

    assert d >= 0
    :ok = ContextStore.stop(store)
  end

  test "collections, merges, sent messages and heartbeats are events",
       %{dir: dir} do
    parent = self()
    id = "collected-#{System.unique_integer([:positive])}"
    handler = fn e, m, md, _ -> send(parent, {e, m, md}) end

    :ok =
      :telemetry.attach_many(
        id,
        [
          [:vsmcp_crdt, :sync, :collected],
          [:vsmcp_crdt, :sync, :merged],
          [:vsmcp_crdt, :sync, :sent],
          [:vsmcp_crdt, :sync, :heartbeat, :stop]
        ],
        handler,
        nil
      )

    on_exit(fn -> :telemetry.detach(id) end)
    topic = "telemetry-collect-#{System.unique_integer([:positive])}"
    sync = [topic: topic, heartbeat_interval: 50, collect_after: 50]

    stores =
      for n <- [:a, :b] do
        storage = [data_dir: Path.join(dir, "#{n}")]
        {:ok, s} = ContextStore.start_link(storage_opts: storage, sync_opts: sync)
        s
      end

    [a, b] = stores
    :ok = ContextStore.create(a, :gone, :g_counter)
    TestHelpers.eventually(fn -> match?({:ok, _}, ContextStore.get(b, :gone)) end)
    :ok = ContextStore.delete(a, :gone)

    assert_receive {[:vsmcp_crdt, :sync, :collected], %{tombstones: t, elements: 0},
                    %{store: store, topic: ^topic}},
                   10_000

    assert t >= 1 and store in stores
    # b merged a's create, one message at a time.
    assert_received {[:vsmcp_crdt, :sync, :merged], %{entries: n, bytes: bytes},
                     %{store: ^b, topic: ^topic}}

    assert n >= 1 and bytes > 0
    # a shipped the create; each heartbeat is a span.
    assert_received {[:vsmcp_crdt, :sync, :sent], %{messages: m, bytes: sent},
                     %{store: ^a, topic: ^topic}}

    assert m >= 1 and sent > 0

    assert_received {[:vsmcp_crdt, :sync, :heartbeat, :stop], %{duration: d},
                     %{store: ^b, topic: ^topic, result: :ok}}

    assert d >= 0
    Enum.each(stores, &ContextStore.stop/1)
  end

  test "operation spans are opt-in and carry the real operation and the store", %{dir: dir} do
    parent = self()
    id = "ops-#{System.unique_integer([:positive])}"

    events = [
      [:vsmcp_crdt, :operation, :start],
      [:vsmcp_crdt, :operation, :stop]
    ]

    :telemetry.attach_many(id, events, fn e, m, md, _ -> send(parent, {e, m, md}) end, nil)
    name = :"telemetry_ops_#{System.unique_integer([:positive])}"
    {:ok, store} = ContextStore.start_link(name: name, storage_opts: [data_dir: dir])
    :ok = ContextStore.create(store, :n, :g_counter)
    refute_receive {[:vsmcp_crdt, :operation, _], _, _}, 50

    Vsmcp.CRDT.Telemetry.operations(true)

    try do
      {:ok, 1} = ContextStore.increment(store, :n)

      assert_receive {[:vsmcp_crdt, :operation, :start], %{system_time: _},
                      %{operation: :increment, store: ^store, name: ^name}}

      assert_receive {[:vsmcp_crdt, :operation, :stop], %{duration: d},
                      %{operation: :increment, result: :ok}}
                     when d >= 0

      {:error, :not_found} = ContextStore.get(store, :missing)
      assert_receive {[:vsmcp_crdt, :operation, :stop], _, %{operation: :get, result: :error}}

      # A large set's get is one operation, whatever NIF calls it takes.
      :ok = ContextStore.create(store, :big, :or_set)
      for i <- 1..300, do: :ok = ContextStore.update(store, :big, {:add, i}, return: :ok)

      drain = fn drain ->
        receive(do: ({[:vsmcp_crdt, :operation, _], _, _} -> drain.(drain)), after: (0 -> :ok))
      end

      drain.(drain)
      {:ok, big} = ContextStore.get(store, :big)
      assert MapSet.size(big) == 300
      assert_receive {[:vsmcp_crdt, :operation, :start], _, %{operation: :get}}
      assert_receive {[:vsmcp_crdt, :operation, :stop], _, %{operation: :get, result: :ok}}
      refute_receive {[:vsmcp_crdt, :operation, _], _, _}, 50
    after
      Vsmcp.CRDT.Telemetry.operations(false)
      :telemetry.detach(id)
    end

    :ok = ContextStore.stop(store)
  end

  test "store open, close and backup are spans", %{dir: dir} do
    parent = self()
    id = "lifecycle-#{System.unique_integer([:positive])}"

    events = for span <- [:open, :close, :backup], do: [:vsmcp_crdt, :store, span, :stop]

    :telemetry.attach_many(id, events, fn e, m, md, _ -> send(parent, {e, m, md}) end, nil)

    try do
      {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: Path.join(dir, "db")])

      assert_receive {[:vsmcp_crdt, :store, :open, :stop], %{duration: _},
                      %{name: nil, topic: nil, result: :ok}}

      backup = Path.join(dir, "backup")
      :ok = ContextStore.backup(store, backup)

      assert_receive {[:vsmcp_crdt, :store, :backup, :stop], _,
                      %{store: ^store, dir: ^backup, result: :ok}}

      {:error, :already_exists} = ContextStore.backup(store, backup)
      assert_receive {[:vsmcp_crdt, :store, :backup, :stop], _, %{result: :error}}

      :ok = ContextStore.stop(store)
      assert_receive {[:vsmcp_crdt, :store, :close, :stop], _, %{store: ^store, result: :ok}}
    after
      :telemetry.detach(id)
    end
  end

  test "measure_store/1 emits the poller measurement; every metric names an emitted event",
       %{dir: dir} do
    parent = self()
    id = "info-#{System.unique_integer([:positive])}"
    event = [:vsmcp_crdt, :store, :info]
    :telemetry.attach(id, event, fn _, m, md, _ -> send(parent, {:info, m, md}) end, nil)

    try do
      name = :"telemetry_info_#{System.unique_integer([:positive])}"
      {:ok, store} = ContextStore.start_link(name: name, storage_opts: [data_dir: dir])
      :ok = ContextStore.create(store, :n, :g_counter)
      {:ok, 2} = ContextStore.increment(store, :n, 2)

      :ok = Vsmcp.CRDT.Telemetry.Metrics.measure_store(name)
      assert_receive {:info, m, %{store: ^name}}
      assert %{items: 1, hot: 1, writes: 2, peers_up: 0} = m
      assert m.memory_bytes > 0 and m.disk_bytes >= 0

      :ok = ContextStore.stop(store)
      # Not running: nothing is emitted.
      :ok = Vsmcp.CRDT.Telemetry.Metrics.measure_store(name)
      refute_receive {:info, _, _}, 50
    after
      :telemetry.detach(id)
    end

    # The metrics listen to events this library emits (documented in
    # Vsmcp.CRDT.Telemetry) and read measurements those events carry.
    emitted = %{
      [:vsmcp_crdt, :sync, :peer_up] => [:count],
      [:vsmcp_crdt, :sync, :peer_down] => [:count],
      [:vsmcp_crdt, :sync, :rejected] => [:count],
      [:vsmcp_crdt, :sync, :round, :stop] => [:duration, :peers],
      [:vsmcp_crdt, :sync, :collected] => [:tombstones, :elements],
      [:vsmcp_crdt, :sync, :merged] => [:entries, :bytes],
      [:vsmcp_crdt, :sync, :sent] => [:messages, :bytes],
      [:vsmcp_crdt, :sync, :heartbeat, :stop] => [:duration],
      [:vsmcp_crdt, :store, :decay] => [:duration, :hot, :warm, :hot_before, :warm_before],
      [:vsmcp_crdt, :store, :storage_error] => [:count],
      [:vsmcp_crdt, :store, :open, :stop] => [:duration],
      [:vsmcp_crdt, :store, :close, :stop] => [:duration],
      [:vsmcp_crdt, :store, :backup, :stop] => [:duration],
      [:vsmcp_crdt, :store, :dets_import, :stop] => [:duration],
      [:vsmcp_crdt, :operation, :stop] => [:duration],
      [:vsmcp_crdt, :operation, :exception] => [:duration],
      [:vsmcp_crdt, :store, :info] =>
        ~w(items hot warm memory_bytes disk_bytes pending_writes oldest_pending_ms log_bytes
           peers_up reads writes remote_merges)a
    }

    for metric <- Vsmcp.CRDT.Telemetry.Metrics.metrics() do
      assert Map.has_key?(emitted, metric.event_name), inspect(metric.name)
      assert List.last(metric.name) in emitted[metric.event_name], inspect(metric.name)
    end
  end
end
