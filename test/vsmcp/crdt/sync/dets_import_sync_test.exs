defmodule Vsmcp.CRDT.Sync.DetsImportSyncTest do
  # The per-node upgrade procedure of the README ("Upgrading from the DETS
  # store") on real :peer nodes: two nodes each import their own DETS file,
  # a third starts empty, and all three converge to what each type promises.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.Test.{Cluster, LegacyDets, SyncNode}

  import Cluster, only: [eventually: 2]

  @moduletag :cluster
  @moduletag timeout: 180_000

  defp start_store(peer, storage_opts) do
    opts = [
      name: :s,
      node_id: :same,
      storage_opts: storage_opts,
      sync_opts: [topic: "dets-import", heartbeat_interval: 200]
    ]

    {:ok, _} = Cluster.call(peer, SyncNode, :start_store, [opts], 60_000)
  end

  defp on(p, f, args), do: Cluster.call(p, ContextStore, f, [:s | args])

  defp everywhere(peers, id, expected) do
    eventually(fn -> Enum.all?(peers, &(on(&1, :get, [id]) == expected)) end, 20_000)
  end

  @tag :tmp_dir
  test "two nodes import their own files: counters per node, sets united, one register value",
       %{tmp_dir: tmp_dir} do
    [a, b, c] = peers = Cluster.start(3, tmp_dir: tmp_dir)
    # Node a's old store had seen n1 at 5 and n2 at 3; node b's, n1 at 4
    # and n2 at 7 (a delta of n2 had not reached a yet, nor one of n1 b).
    file_a =
      LegacyDets.write!(Path.join(a.dir, "crdt_storage.dets"), [
        {:hits, {:g_counter, LegacyDets.g_counter(%{n1: 5, n2: 3})}},
        {:balance, {:pn_counter, LegacyDets.pn_counter(%{n1: 10}, %{n2: 1})}},
        {:tags, {:or_set, LegacyDets.or_set(%{"x" => [{:n1, 1}]}, %{})}},
        {:config, {:lww_register, LegacyDets.lww_register("from a")}},
        {:only_a, {:g_counter, LegacyDets.g_counter(%{n1: 1})}}
      ])

    file_b =
      LegacyDets.write!(Path.join(b.dir, "crdt_storage.dets"), [
        {:hits, {:g_counter, LegacyDets.g_counter(%{n1: 4, n2: 7}, struct: false)}},
        {:balance, {:pn_counter, LegacyDets.pn_counter(%{n1: 8, n2: 2}, %{n2: 3})}},
        {:tags, {:or_set, LegacyDets.or_set(%{"y" => [{:n2, 1}]}, %{"x" => [{:n1, 1}]})}},
        {:config, {:lww_register, LegacyDets.lww_register("from b")}}
      ])

    start_store(a, dets_file: file_a)
    start_store(b, dets_file: file_b)
    start_store(c, data_dir: Path.join(c.dir, "crdt"))

    everywhere(peers, :hits, {:ok, 5 + 7})
    everywhere(peers, :balance, {:ok, 10 + 2 - 3})
    # Sets: an element live in any node's file is in the set.
    everywhere(peers, :tags, {:ok, MapSet.new(["x", "y"])})
    everywhere(peers, :only_a, {:ok, 1})

    eventually(
      fn ->
        values = Enum.map(peers, &on(&1, :get, [:config]))
        length(Enum.uniq(values)) == 1 and hd(values) in [{:ok, "from a"}, {:ok, "from b"}]
      end,
      20_000
    )

    # Metadata: the importing node's own path, or :remote on a node that
    # imported nothing.
    assert {:ok, %{migrated_from: ^file_a}} = on(a, :get_metadata, [:hits])
    assert {:ok, %{migrated_from: ^file_b}} = on(b, :get_metadata, [:hits])
    assert {:ok, %{migrated_from: :remote}} = on(c, :get_metadata, [:hits])

    # Writes after the import: a register write on the node that imported
    # nothing wins everywhere; increments add to the imported counts.
    {:ok, _} = on(c, :set, [:config, "after"])
    {:ok, _} = on(b, :increment, [:hits, 10])
    everywhere(peers, :config, {:ok, "after"})
    everywhere(peers, :hits, {:ok, 22})
  end
end
