defmodule Vsmcp.CRDT.ContextStoreTiersTest do
  @moduledoc """
  Tier transitions of `Vsmcp.CRDT.ContextStore` under small limits: hot
  (decoded, at most `memory_limit` items), warm (encoded, at most
  `ets_limit`), cold (RocksDB only). The decay timer is set far in the
  future so that only `ContextStore.decay_now/1` runs demotion passes.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  @small [memory_limit: 2, ets_limit: 3, access_threshold: 2, decay_interval: 3_600_000]

  setup do
    dir = tmp_dir!("vsmcp_crdt_tiers")
    opts = [node_id: :tiers, storage_opts: [{:data_dir, dir} | @small]]
    %{dir: dir, opts: opts, store: start_store!(opts)}
  end

  defp tier(store, id) do
    {:ok, %{tier: tier}} = ContextStore.get_metadata(store, id)
    tier
  end

  defp tiers(store, ids), do: Map.new(ids, &{&1, tier(store, &1)})

  test "limits: at most 2 hot and 3 warm, the rest cold, and every value readable",
       %{store: store} do
    ids = for i <- 1..10, do: {:item, i}

    for {id, i} <- Enum.with_index(ids, 1) do
      :ok = ContextStore.create(store, id, :g_counter)
      {:ok, ^i} = ContextStore.increment(store, id, i)
    end

    stats = ContextStore.stats(store)
    assert stats.hot <= 2
    assert stats.warm <= 3

    # Metadata does not promote; its tiers agree with the counts.
    by_tier = tiers(store, ids) |> Enum.group_by(fn {_, t} -> t end, fn {id, _} -> id end)
    assert length(Map.get(by_tier, :hot, [])) == stats.hot
    assert length(Map.get(by_tier, :warm, [])) == stats.warm
    assert length(Map.get(by_tier, :cold, [])) == 10 - stats.hot - stats.warm
    assert length(Map.get(by_tier, :cold, [])) >= 5
    # The newest is hot, the oldest went cold.
    assert tier(store, {:item, 10}) == :hot
    assert tier(store, {:item, 1}) == :cold
    assert ContextStore.stats(store) |> Map.take([:hot, :warm]) == Map.take(stats, [:hot, :warm])

    for {id, i} <- Enum.with_index(ids, 1) do
      assert {:ok, ^i} = ContextStore.get(store, id)
    end

    stats = ContextStore.stats(store)
    assert stats.hot <= 2 and stats.warm <= 3
    assert Enum.sort(ContextStore.list_crdts(store)) == Enum.sort(ids)
  end

  test "a cold id read once becomes warm, read again (access_threshold 2) becomes hot",
       %{store: store} do
    for i <- 1..10, do: :ok = ContextStore.create(store, i, :or_set)
    {:ok, _} = ContextStore.add(store, 10, "ten")
    assert tier(store, 1) == :cold

    :ok = ContextStore.sync(store)
    assert {:ok, set} = ContextStore.get(store, 1)
    assert MapSet.size(set) == 0
    assert tier(store, 1) == :warm

    assert {:ok, _} = ContextStore.get(store, 1)
    assert tier(store, 1) == :hot

    # A write counts as an access too.
    assert tier(store, 2) == :cold
    assert {:ok, _} = ContextStore.add(store, 2, "x")
    assert tier(store, 2) == :warm
    assert {:ok, true} = ContextStore.member?(store, 2, "x")
    assert tier(store, 2) == :hot

    stats = ContextStore.stats(store)
    assert stats.hot <= 2 and stats.warm <= 3
    assert {:ok, set} = ContextStore.get(store, 10)
    assert set == MapSet.new(["ten"])
  end

  test "decay_now demotes untouched items one level per pass", %{store: store} do
    :ok = ContextStore.create(store, :a, :pn_counter)
    :ok = ContextStore.create(store, :b, :pn_counter)
    {:ok, -1} = ContextStore.decrement(store, :a)
    {:ok, 2} = ContextStore.increment(store, :b, 2)
    assert tiers(store, [:a, :b]) == %{a: :hot, b: :hot}

    # A pass clears the "recently used" mark of both.
    :ok = ContextStore.decay_now(store)
    assert tiers(store, [:a, :b]) == %{a: :hot, b: :hot}

    # :b is touched, :a is not: only :a goes down one level.
    {:ok, 2} = ContextStore.get(store, :b)
    :ok = ContextStore.decay_now(store)
    assert tiers(store, [:a, :b]) == %{a: :warm, b: :hot}

    # Next pass: :a warm -> cold, :b (untouched since) hot -> warm.
    :ok = ContextStore.decay_now(store)
    assert tiers(store, [:a, :b]) == %{a: :cold, b: :warm}
    assert ContextStore.stats(store) |> Map.take([:hot, :warm]) == %{hot: 0, warm: 1}

    :ok = ContextStore.decay_now(store)
    assert tiers(store, [:a, :b]) == %{a: :cold, b: :cold}
    assert ContextStore.stats(store) |> Map.take([:hot, :warm]) == %{hot: 0, warm: 0}

    # Cold stays cold; values are intact.
    :ok = ContextStore.decay_now(store)
    assert {:ok, -1} = ContextStore.get(store, :a)
    assert {:ok, 2} = ContextStore.get(store, :b)
  end

  test "decay keeps the tiers within their limits", %{store: store} do
    # Two hot, three warm; the warm ones are then used (below the threshold,
    # so they stay warm) and the hot ones are not.
    for i <- 1..5, do: :ok = ContextStore.create(store, i, :g_counter)
    hot = for i <- 1..5, tier(store, i) == :hot, do: i
    warm = for i <- 1..5, tier(store, i) == :warm, do: i
    assert length(hot) == 2 and length(warm) == 3

    :ok = ContextStore.decay_now(store)
    for i <- warm, do: {:ok, 0} = ContextStore.get(store, i)
    :ok = ContextStore.decay_now(store)

    stats = ContextStore.stats(store)
    assert stats.hot <= 2, "hot tier over its limit after decay: #{inspect(stats)}"
    assert stats.warm <= 3, "warm tier over its limit after decay: #{inspect(stats)}"
    for i <- 1..5, do: assert({:ok, 0} = ContextStore.get(store, i))
  end

  test "writes to cold items work and persist", %{store: store, opts: opts} do
    :ok = ContextStore.create(store, :counter, :g_counter)
    :ok = ContextStore.create(store, :pn, :pn_counter)
    :ok = ContextStore.create(store, :set, :aw_set)
    :ok = ContextStore.create(store, :reg, :lww_register)
    {:ok, 5} = ContextStore.increment(store, :counter, 5)
    {:ok, _} = ContextStore.add(store, :set, "old")

    # Push them all to cold.
    for i <- 1..10, do: :ok = ContextStore.create(store, {:filler, i}, :g_counter)
    for _ <- 1..3, do: :ok = ContextStore.decay_now(store)

    assert tiers(store, [:counter, :pn, :set, :reg]) == %{
             counter: :cold,
             pn: :cold,
             set: :cold,
             reg: :cold
           }

    assert {:ok, 7} = ContextStore.increment(store, :counter, 2)
    for _ <- 1..3, do: :ok = ContextStore.decay_now(store)
    assert tier(store, :pn) == :cold
    assert {:ok, -4} = ContextStore.decrement(store, :pn, 4)
    assert {:ok, set} = ContextStore.add(store, :set, "new")
    assert set == MapSet.new(["old", "new"])
    assert {:ok, "v"} = ContextStore.set(store, :reg, "v")
    for _ <- 1..3, do: :ok = ContextStore.decay_now(store)
    assert tier(store, :set) == :cold
    assert :ok = ContextStore.delete(store, {:filler, 1})
    assert {:error, :already_exists} = ContextStore.create(store, {:filler, 2}, :or_set)

    stop_and_wait(store)
    store = start_store!(opts)
    assert {:ok, 7} = ContextStore.get(store, :counter)
    assert {:ok, -4} = ContextStore.get(store, :pn)
    assert {:ok, ^set} = ContextStore.get(store, :set)
    assert {:ok, "v"} = ContextStore.get(store, :reg)
    assert {:error, :not_found} = ContextStore.get(store, {:filler, 1})
    assert {:ok, 0} = ContextStore.get(store, {:filler, 2})
  end

  test "demotion-heavy workload: 5_000 ids round-robin end with exact values" do
    dir = tmp_dir!("vsmcp_crdt_demotion")

    opts = [
      node_id: :demotion,
      storage_opts: [data_dir: dir, memory_limit: 10, ets_limit: 20, decay_interval: 3_600_000]
    ]

    store = start_store!(opts)
    n = 5_000
    rounds = 3

    for i <- 1..n do
      type = if rem(i, 10) == 0, do: :or_set, else: :pn_counter
      :ok = ContextStore.create(store, {:id, i}, type)
    end

    for r <- 1..rounds, i <- 1..n do
      id = {:id, i}

      if rem(i, 10) == 0 do
        {:ok, _} = ContextStore.add(store, id, {r, i})
      else
        amount = rem(i * r, 7) - 3
        :ok = ContextStore.update(store, id, {:increment, amount}, return: :ok)
      end

      if rem(i, 1_000) == 500, do: :ok = ContextStore.decay_now(store)
    end

    stats = ContextStore.stats(store)
    assert stats.hot <= 10 and stats.warm <= 20

    check = fn store ->
      for i <- 1..n do
        expected =
          if rem(i, 10) == 0,
            do: MapSet.new(for(r <- 1..rounds, do: {r, i})),
            else: Enum.sum(for r <- 1..rounds, do: rem(i * r, 7) - 3)

        assert {:ok, ^expected} = ContextStore.get(store, {:id, i})
      end
    end

    check.(store)
    stop_and_wait(store)
    check.(start_store!(opts))
  end
end
