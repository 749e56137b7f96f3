defmodule Vsmcp.CRDT.Sync.FeaturesTest do
  # Notifications, rolling upgrades, the PubSub transport with the default
  # store as VSMCP runs it, type clashes and large values, on :peer nodes.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.Sync.Transport
  alias Vsmcp.Test.{Cluster, SyncNode}

  import Cluster, only: [eventually: 1, eventually: 2]

  @moduletag :cluster
  @moduletag timeout: 180_000

  defp start_store(p, sync_opts) do
    opts = [
      name: :s,
      storage_opts: [data_dir: Path.join(p.dir, "crdt")],
      sync_opts: Keyword.merge([topic: "features"], sync_opts)
    ]

    {:ok, _} = Cluster.call(p, SyncNode, :start_store, [opts])
  end

  defp get(p, id, store \\ :s), do: Cluster.call(p, ContextStore, :get, [store, id])
  defp on(p, f, args), do: Cluster.call(p, ContextStore, f, [:s | args])

  defp everywhere(peers, id, expected, store \\ :s) do
    eventually(fn -> Enum.all?(peers, &(get(&1, id, store) == expected)) end, 15_000)
  end

  @tag :tmp_dir
  test "subscribers see local and remote changes", %{tmp_dir: tmp_dir} do
    [a, b] = peers = Cluster.start(2, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, [])
    {:ok, all} = Cluster.call(b, SyncNode, :start_collector, [:s, :all])
    {:ok, only_y} = Cluster.call(b, SyncNode, :start_collector, [:s, [:y]])
    :ok = on(a, :create, [:x, :g_counter])
    {:ok, _} = on(a, :increment, [:x, 2])
    everywhere(peers, :x, {:ok, 2})
    eventually(fn -> {:x, :remote} in Cluster.call(b, SyncNode, :collected, [all]) end)
    {:ok, _} = on(b, :increment, [:x, 1])
    eventually(fn -> {:x, :local} in Cluster.call(b, SyncNode, :collected, [all]) end)
    :ok = on(a, :create, [:y, :or_set])
    eventually(fn -> {:y, :remote} in Cluster.call(b, SyncNode, :collected, [only_y]) end)
    refute Enum.any?(Cluster.call(b, SyncNode, :collected, [only_y]), &match?({:x, _}, &1))
  end

  @tag :tmp_dir
  test "a node speaking only the previous wire version keeps converging", %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    start_store(a, [])
    start_store(b, [])
    start_store(c, wire_versions: [1])
    :ok = on(c, :create, [:n, :pn_counter])
    everywhere(peers, :n, {:ok, 0})
    for p <- peers, do: {:ok, _} = on(p, :increment, [:n, 7])
    {:ok, _} = on(c, :decrement, [:n, 1])
    everywhere(peers, :n, {:ok, 20})
    versions = Map.new(on(a, :sync_info, []).peers, &{&1.key, &1.wire_version})
    assert versions[on(c, :sync_info, []).replica] == 1
    assert versions[on(b, :sync_info, []).replica] == 2
  end

  @tag :tmp_dir
  test "the default store of a host app syncs over Vsmcp.PubSub", %{tmp_dir: tmp_dir} do
    env = fn h ->
      [
        {:vsmcp, ContextStore,
         [node_id: :custom_node_name, storage_opts: [data_dir: Path.join(h.dir, "default")]]}
      ]
    end

    peers = Cluster.start(3, tmp_dir: tmp_dir, pubsub: Vsmcp.PubSub, app_env: env)
    for p <- peers, do: {:ok, _} = Cluster.call(p, SyncNode, :start_default, [])
    [a, b, c] = peers
    info = Cluster.call(a, ContextStore, :sync_info, [])
    assert info.transport == Transport.PubSub
    assert info.topic == "vsmcp_crdt:Vsmcp.CRDT.ContextStore"
    :ok = Cluster.call(a, ContextStore, :create, [:page_views, :g_counter])
    everywhere(peers, :page_views, {:ok, 0}, ContextStore)
    for p <- peers, do: {:ok, _} = Cluster.call(p, ContextStore, :increment, [:page_views, 3])
    everywhere(peers, :page_views, {:ok, 9}, ContextStore)
    :ok = Cluster.call(b, ContextStore, :create, [:users, :or_set])
    everywhere(peers, :users, {:ok, MapSet.new()}, ContextStore)
    {:ok, _} = Cluster.call(c, ContextStore, :add, [:users, "ana"])
    everywhere(peers, :users, {:ok, MapSet.new(["ana"])}, ContextStore)
    assert Cluster.call(a, ContextStore, :sync, []) == :ok
  end

  @tag :tmp_dir
  test "concurrent creates of one id with two types: one winner, losers dropped and counted",
       %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, [])
    Cluster.partition([a], [b, c])
    :ok = on(a, :create, [:x, :g_counter])
    {:ok, _} = on(a, :increment, [:x, 5])
    :ok = on(b, :create, [:x, :or_set])
    {:ok, _} = on(b, :add, [:x, "e"])
    eventually(fn -> get(c, :x) == {:ok, MapSet.new(["e"])} end)
    Cluster.heal([a], [b, c])

    eventually(fn ->
      types = for p <- peers, do: on(p, :get_metadata, [:x]) |> elem(1) |> Map.get(:type)
      values = for p <- peers, do: get(p, :x)
      length(Enum.uniq(types)) == 1 and length(Enum.uniq(values)) == 1
    end)

    clashes = Enum.sum(for p <- peers, do: on(p, :sync_info, []).rejected.type_clash)
    assert clashes > 0
  end

  @tag :tmp_dir
  test "a 16 MiB register value ships whole", %{tmp_dir: tmp_dir} do
    [a, b] = peers = Cluster.start(2, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, [])
    :ok = on(a, :create, [:big, :lww_register])
    everywhere(peers, :big, {:ok, nil})
    value = :binary.copy(<<1, 2, 3, 4>>, 4 * 1024 * 1024 - 16)
    {:ok, _} = on(a, :set, [:big, value])
    eventually(fn -> get(b, :big) == {:ok, value} end, 30_000)
  end
end
