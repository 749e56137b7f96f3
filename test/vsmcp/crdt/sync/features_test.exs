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
    assert versions[on(b, :sync_info, []).replica] == 4
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
    size = 16 * 1024 * 1024 - 64
    hash = Cluster.call(a, SyncNode, :set_big, [:s, :big, size], 60_000)

    eventually(
      fn -> Cluster.call(b, SyncNode, :value_hash, [:s, :big]) == {hash, size} end,
      30_000
    )
  end

  @tag :tmp_dir
  test "removed elements and delete tombstones are collected once every node agrees",
       %{tmp_dir: tmp_dir} do
    peers = Cluster.start(3, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, heartbeat_interval: 200, collect_after: 300)
    [a, b, _c] = peers
    :ok = on(a, :create, [:set, :or_set])
    :ok = on(a, :create, [:gone, :g_counter])
    everywhere(peers, :set, {:ok, MapSet.new()})
    n = 20_000
    :ok = Cluster.call(a, SyncNode, :add_range, [:s, :set, 1..n], 60_000)
    everywhere(peers, :set, {:ok, MapSet.new(1..n)})
    {:ok, full} = on(b, :memory, [:set])
    :ok = Cluster.call(a, SyncNode, :remove_range, [:s, :set, 1..n], 60_000)
    :ok = on(b, :delete, [:gone])
    everywhere(peers, :set, {:ok, MapSet.new()})
    everywhere(peers, :gone, {:error, :not_found})

    # Each node collects once every member has delivered the removes and
    # everything before them (causal stability).
    eventually(
      fn ->
        Enum.all?(peers, fn p ->
          {:ok, bytes} = on(p, :memory, [:set])
          bytes < full / 20
        end)
      end,
      20_000
    )

    # Every token was collected by some node (a node may also drop tokens
    # by joining a copy that collected them, which retires them the same
    # way), in one pass or several (a stability snapshot covers the removes
    # that had arrived when it was taken).
    eventually(
      fn ->
        Enum.sum(for p <- peers, do: on(p, :sync_info, []).counters.collected_elements) >= n
      end,
      20_000
    )

    assert get(a, :gone) == {:error, :not_found}

    # The delete's tombstone is collected on every node too, and the id can
    # be created again.
    eventually(
      fn ->
        Enum.all?(peers, fn p ->
          on(p, :sync_info, []).counters.collected_tombstones >= 1 and
            on(p, :info, []).crdts.tombstones == 0
        end)
      end,
      20_000
    )

    :ok = on(a, :create, [:gone, :pn_counter])
    {:ok, _} = on(a, :decrement, [:gone, 2])
    everywhere(peers, :gone, {:ok, -2})

    # The set still works, and elements can come back.
    {:ok, _} = on(b, :add, [:set, 7])
    everywhere(peers, :set, {:ok, MapSet.new([7])})
  end

  @tag :tmp_dir
  test "receiving and merging create no atoms; a local read decodes as stored",
       %{tmp_dir: tmp_dir} do
    [a, b] = peers = Cluster.start(2, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, [])
    name = "vsmcp_atom_probe_#{System.unique_integer([:positive])}"
    {:ok, sub} = Cluster.call(b, SyncNode, :start_collector, [:s, :all])
    :ok = on(a, :create, [:probe_set, :or_set])
    everywhere(peers, :probe_set, {:ok, MapSet.new()})
    refute Cluster.call(b, SyncNode, :atom_exists?, [name])
    # On a, the element (and an id) naming a new atom.
    {:ok, _} = Cluster.call(a, ContextStore, :add, [:s, :probe_set, String.to_atom(name)])
    :ok = Cluster.call(a, ContextStore, :create, [:s, {:id, String.to_atom(name)}, :g_counter])

    eventually(fn ->
      Cluster.call(b, ContextStore, :memory, [:s, :probe_set]) |> elem(1) > 100
    end)

    assert on(b, :sync, []) == :ok
    # Merged on b, notified, and still no atom: the id naming the new atom
    # is notified as a `Vsmcp.CRDT.UnsafeTerm`.
    assert {:probe_set, :remote} in Cluster.call(b, SyncNode, :collected, [sub])
    refute Cluster.call(b, SyncNode, :atom_exists?, [name])
    # A local read decodes the element as stored, as distribution would.
    {:ok, set} = get(b, :probe_set)
    assert MapSet.size(set) == 1
    assert Cluster.call(b, SyncNode, :atom_exists?, [name])
  end

  @tag :tmp_dir
  test "decode: :safe reads what names unknown atoms as UnsafeTerm, which still names it",
       %{tmp_dir: tmp_dir} do
    [a, b] = peers = Cluster.start(2, tmp_dir: tmp_dir)
    start_store(a, [])
    start_store(b, decode: :safe)
    name = "vsmcp_safe_probe_#{System.unique_integer([:positive])}"
    :ok = on(a, :create, [:tags, :or_set])
    :ok = on(a, :create, [:reg, :lww_register])
    everywhere(peers, :reg, {:ok, nil})
    # On a: an element, a register value and an id that name a new atom.
    unknown = String.to_atom(name)
    known = %{tag: "known", at: {2026, 12, 7}}
    {:ok, _} = Cluster.call(a, ContextStore, :add, [:s, :tags, {unknown, 1}])
    {:ok, _} = Cluster.call(a, ContextStore, :add, [:s, :tags, known])
    {:ok, _} = Cluster.call(a, ContextStore, :set, [:s, :reg, %{state: unknown}])
    :ok = Cluster.call(a, ContextStore, :create, [:s, {:id, unknown}, :g_counter])
    {:ok, _} = Cluster.call(a, ContextStore, :increment, [:s, {:id, unknown}, 3])

    eventually(fn -> match?({:ok, %{}}, get(b, :reg)) and get(b, :reg) != {:ok, nil} end)
    eventually(fn -> match?({:ok, s} when map_size(s.map) == 2, get(b, :tags)) end)
    eventually(fn -> length(on(b, :list_crdts, [])) == 3 end)

    # Every read on b: what is known decodes, the rest is an UnsafeTerm,
    # and no atom was made.
    {:ok, tags} = get(b, :tags)
    assert known in tags
    assert [%Vsmcp.CRDT.UnsafeTerm{} = element] = Enum.to_list(MapSet.delete(tags, known))
    assert {:ok, %Vsmcp.CRDT.UnsafeTerm{}} = get(b, :reg)
    ids = on(b, :list_crdts, [])
    assert [%Vsmcp.CRDT.UnsafeTerm{} = id] = ids -- [:tags, :reg]
    refute Cluster.call(b, SyncNode, :atom_exists?, [name])

    # The same shape made by hand is an ordinary map: it names nothing
    # stored (and adding it adds that map).
    forged = %Vsmcp.CRDT.UnsafeTerm{bytes: element.bytes, tag: :binary.copy(<<0>>, 16)}
    assert on(b, :member?, [:tags, forged]) == {:ok, false}
    assert get(b, %{id | tag: "x"}) == {:error, :not_found}

    # The struct read names the original term: b reads the counter,
    # removes the element and deletes the id, and a sees it all.
    assert get(b, id) == {:ok, 3}
    assert on(b, :member?, [:tags, element]) == {:ok, true}
    {:ok, _} = on(b, :remove, [:tags, element])
    :ok = on(b, :delete, [id])
    everywhere(peers, :tags, {:ok, MapSet.new([known])})
    eventually(fn -> get(a, {:id, unknown}) == {:error, :not_found} end)
    refute Cluster.call(b, SyncNode, :atom_exists?, [name])
  end
end
