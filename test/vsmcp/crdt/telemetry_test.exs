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
      [:vsmcp_crdt, :sync, :rejected]
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

    :ok = ContextStore.stop(store)
  end

  test "per-operation events are opt-in", %{dir: dir} do
    parent = self()
    id = "ops-#{System.unique_integer([:positive])}"
    event = [:vsmcp_crdt, :store, :operation]
    :telemetry.attach(id, event, fn _, m, md, _ -> send(parent, {:op, m, md}) end, nil)
    {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: dir])
    :ok = ContextStore.create(store, :n, :g_counter)
    refute_receive {:op, _, _}, 50

    Vsmcp.CRDT.Telemetry.operations(true)

    try do
      {:ok, 1} = ContextStore.increment(store, :n)
      assert_receive {:op, %{duration: d}, %{operation: :update, result: :ok}} when d >= 0
      {:error, :not_found} = ContextStore.get(store, :missing)
      assert_receive {:op, _, %{operation: :get, result: :error}}
    after
      Vsmcp.CRDT.Telemetry.operations(false)
      :telemetry.detach(id)
    end

    :ok = ContextStore.stop(store)
  end
end
