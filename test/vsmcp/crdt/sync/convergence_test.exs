defmodule Vsmcp.CRDT.Sync.ConvergenceTest do
  # Stores on real :peer nodes (loopback, dist_auto_connect never) sync
  # through the transports: counters, sets, registers, create and delete.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.Test.{Cluster, SyncNode}

  import Cluster, only: [eventually: 1, eventually: 2]

  @moduletag :cluster
  @moduletag timeout: 180_000

  defp start_stores(peers, sync_opts, extra \\ []) do
    for p <- peers do
      opts =
        [
          name: :s,
          node_id: :same,
          storage_opts: [data_dir: Path.join(p.dir, "crdt")],
          sync_opts: Keyword.merge([topic: "convergence"], sync_opts)
        ] ++ extra

      {:ok, _} = Cluster.call(p, SyncNode, :start_store, [opts])
    end
  end

  defp get(p, id), do: Cluster.call(p, ContextStore, :get, [:s, id])
  defp on(p, f, args), do: Cluster.call(p, ContextStore, f, [:s | args])

  defp everywhere(peers, id, expected, timeout \\ 10_000) do
    eventually(fn -> Enum.all?(peers, &(get(&1, id) == expected)) end, timeout)
  end

  defp same_everywhere(peers, id) do
    eventually(fn ->
      values = Enum.map(peers, &get(&1, id))
      match?({:ok, _}, hd(values)) and Enum.uniq(values) |> length() == 1
    end)

    get(hd(peers), id)
  end

  @tag :tmp_dir
  test "three nodes with the same node_id increment one counter: the exact sum everywhere",
       %{tmp_dir: tmp_dir} do
    peers = Cluster.start(3, tmp_dir: tmp_dir)
    start_stores(peers, [])
    [a | _] = peers
    :ok = on(a, :create, [:hits, :g_counter])
    everywhere(peers, :hits, {:ok, 0})

    tasks =
      for p <- peers do
        Task.async(fn -> Cluster.call(p, SyncNode, :burst, [:s, :hits, 2_000], 60_000) end)
      end

    assert Enum.map(tasks, &Task.await(&1, 60_000)) == [2_000, 2_000, 2_000]
    everywhere(peers, :hits, {:ok, 6_000})
    for p <- peers, do: assert(on(p, :sync, []) == :ok)
    info = on(a, :sync_info, [])
    assert length(info.peers) == 2
    assert Enum.all?(info.peers, & &1.up)

    # Per peer: traffic both ways, recent contact, refusals by reason.
    for p <- info.peers do
      assert p.msgs_sent > 0 and p.bytes_sent > 0 and p.deltas_sent > 0
      assert p.msgs_received > 0 and p.bytes_received > 0 and p.entries_received > 0
      assert p.last_contact_ms_ago < 5_000
      assert p.ack_lag >= 0
      assert p.rejected.malformed == 0
    end
  end

  @tag :tmp_dir
  test "sets, registers, create and delete converge", %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    start_stores(peers, [])
    :ok = on(a, :create, [:tags, :or_set])
    :ok = on(b, :create, [:reg, :lww_register])
    everywhere(peers, :tags, {:ok, MapSet.new()})
    everywhere(peers, :reg, {:ok, nil})

    # Concurrent add and remove of one element, while partitioned so they
    # are truly concurrent.
    {:ok, _} = on(a, :add, [:tags, "x"])
    everywhere(peers, :tags, {:ok, MapSet.new(["x"])})
    Cluster.partition([a], [b, c])
    {:ok, _} = on(a, :add, [:tags, "x"])
    {:ok, _} = on(b, :remove, [:tags, "x"])
    {:ok, _} = on(a, :set, [:reg, "from a"])
    {:ok, _} = on(c, :set, [:reg, "from c"])
    Cluster.heal([a], [b, c])
    tags = same_everywhere(peers, :tags)
    # Remove-wins by default: the concurrent remove beats the re-add.
    assert tags == {:ok, MapSet.new()}
    {:ok, reg} = same_everywhere(peers, :reg)
    assert reg in ["from a", "from c"]

    # Delete propagates; a later create of the same id wins everywhere.
    :ok = on(c, :delete, [:tags])
    everywhere(peers, :tags, {:error, :not_found})
    :ok = on(b, :create, [:tags, :pn_counter])
    {:ok, _} = on(b, :decrement, [:tags, 4])
    everywhere(peers, :tags, {:ok, -4})
    {:ok, meta} = on(a, :get_metadata, [:tags])
    assert meta.type == :pn_counter
  end

  @tag :tmp_dir
  test "a partition heals: both sides keep writing and no increment is lost",
       %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    start_stores(peers, heartbeat_interval: 200, down_after: 1_000)
    :ok = on(a, :create, [:n, :pn_counter])
    everywhere(peers, :n, {:ok, 0})
    Cluster.partition([a], [b, c])
    assert Cluster.call(a, SyncNode, :burst, [:s, :n, 500]) == 500
    assert Cluster.call(b, SyncNode, :burst, [:s, :n, 300]) == 300
    {:ok, _} = on(c, :decrement, [:n, 50])
    # Each side sees only its own writes.
    eventually(fn -> get(c, :n) == {:ok, 250} end)
    assert get(a, :n) == {:ok, 500}
    # A sync round cannot reach the other side.
    assert {:error, {:timeout, silent}} = on(a, :sync, [300])
    assert silent != []
    Cluster.heal([a], [b, c])
    everywhere(peers, :n, {:ok, 750}, 15_000)
  end

  @tag :tmp_dir
  test "a late joiner receives every existing CRDT", %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    start_stores([a, b], [])

    for i <- 1..50 do
      :ok = on(a, :create, [{:c, i}, :g_counter])
      {:ok, _} = on(b, :increment, [{:c, i}, i]) |> retry_not_found(b, {:c, i}, i)
    end

    :ok = on(b, :create, [:set, :aw_set])
    {:ok, _} = on(b, :add, [:set, {:elem, 1}])
    start_stores([c], [])
    everywhere(peers, :set, {:ok, MapSet.new([{:elem, 1}])})
    for i <- 1..50, do: everywhere(peers, {:c, i}, {:ok, i})
    assert length(on(c, :list_crdts, [])) == 51
  end

  # b may not have learned of the id yet.
  defp retry_not_found({:error, :not_found}, p, id, n) do
    eventually(fn -> match?({:ok, _}, get(p, id)) end)
    on(p, :increment, [id, n])
  end

  defp retry_not_found(other, _p, _id, _n), do: other
end
