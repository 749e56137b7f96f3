defmodule Vsmcp.CRDT.Sync.ChaosTest do
  # A short chaos campaign on :peer nodes (issue 16): a few seeds of
  # Vsmcp.Test.Chaos, each 3 to 5 nodes under kills, partitions, a lossy
  # transport, clock skew, a full disk, a node leaving and a restored
  # backup. The long campaign: `MIX_ENV=test mix run bench/chaos.exs`.
  use ExUnit.Case, async: false

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.Test.{Chaos, Cluster, SyncNode}

  @moduletag :cluster
  @moduletag timeout: 300_000

  # Set CHAOS_SEEDS=1,2,3 to replay seeds.
  @seeds (case System.get_env("CHAOS_SEEDS") do
            nil -> [1, 2, 3]
            list -> list |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
          end)

  for seed <- @seeds do
    @tag :tmp_dir
    test "chaos seed #{seed}: every live node converges on what was acknowledged", %{
      tmp_dir: tmp_dir
    } do
      report = Chaos.run(unquote(seed), tmp_dir: tmp_dir, steps: 12)
      assert report.failures == [], Chaos.format(report)
      assert report.ops > 0
    end
  end

  # The clock-skew hook the campaign uses: a node whose store clock runs
  # 2 s ahead is seen ahead by its peers, and its writes stamped beyond
  # their max_clock_offset wait until it is fixed and their clocks pass.
  @tag :tmp_dir
  test "a node's store clock skewed ahead by inject_clock_skew/1 is seen ahead, then fixed",
       %{tmp_dir: tmp_dir} do
    [a, b] = Cluster.start(2, tmp_dir: tmp_dir, app_env: [{:logger, :level, :error}])
    sync = [topic: "chaos_skew", heartbeat_interval: 100]

    for p <- [a, b] do
      opts = [name: :s, storage_opts: [data_dir: Path.join(p.dir, "crdt")], sync_opts: sync]
      {:ok, _} = Cluster.call(p, SyncNode, :start_store, [opts])
    end

    :ok = Cluster.call(a, ContextStore, :inject_clock_skew, [2_000])
    :ok = Cluster.call(a, ContextStore, :create, [:s, :r, :lww_register])
    {:ok, _} = Cluster.call(a, ContextStore, :set, [:s, :r, "ahead"])

    Cluster.eventually(fn ->
      Cluster.call(b, ContextStore, :info, [:s]).clock.max_remote_ahead_ms >= 1_500
    end)

    # Its register value, stamped 2 s ahead, is refused (and counted)
    # while beyond b's offset.
    Cluster.eventually(fn ->
      Cluster.call(b, ContextStore, :sync_info, [:s]).rejected.clock_ahead > 0
    end)

    :ok = Cluster.call(a, ContextStore, :inject_clock_skew, [0])
    Cluster.eventually(fn -> Cluster.call(b, ContextStore, :get, [:s, :r]) == {:ok, "ahead"} end)
  end
end
