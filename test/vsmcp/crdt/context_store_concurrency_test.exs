defmodule Vsmcp.CRDT.ContextStoreConcurrencyTest do
  @moduledoc """
  Many processes calling one `Vsmcp.CRDT.ContextStore` at once (callers
  reach the native store directly, not through a mailbox): no update is
  lost, creates are exclusive, and the cold-tier path (tiny limits, a decay
  pass running meanwhile) is as exact as the in-memory one.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  @timeout 120_000

  defp run_all(funs) do
    funs |> Enum.map(&Task.async/1) |> Task.await_many(@timeout)
  end

  defp store!(extra_storage \\ [], opts \\ []) do
    dir = tmp_dir!("vsmcp_crdt_conc")
    opts = Keyword.merge([storage_opts: [{:data_dir, dir} | extra_storage]], opts)
    {start_store!(opts), opts}
  end

  @tag timeout: @timeout
  test "50 processes x 2000 increments on one G-Counter give exactly 100_000" do
    {store, opts} = store!()
    :ok = ContextStore.create(store, :hits, :g_counter)

    returned =
      run_all(
        for _ <- 1..50 do
          fn ->
            for _ <- 1..2_000 do
              {:ok, v} = ContextStore.increment(store, :hits)
              v
            end
          end
        end
      )

    assert {:ok, 100_000} = ContextStore.get(store, :hits)
    # Every increment saw its own new value: 1..100_000, each once.
    all = List.flatten(returned)
    assert length(all) == 100_000
    assert MapSet.new(all) == MapSet.new(1..100_000)
    # Within one process the values it saw only grow.
    for vs <- returned, do: assert(vs == Enum.sort(vs))

    stop_and_wait(store)
    store = start_store!(opts)
    assert {:ok, 100_000} = ContextStore.get(store, :hits)
  end

  @tag timeout: @timeout
  test "concurrent PN-Counter increments and decrements give the exact sum" do
    {store, _} = store!()
    :ok = ContextStore.create(store, :balance, :pn_counter)

    plan = fn p ->
      for i <- 1..1_000 do
        amount = rem(i * p, 9) + 1
        if rem(i + p, 3) == 0, do: {:decrement, amount}, else: {:increment, amount}
      end
    end

    expected =
      for p <- 1..20, {op, n} <- plan.(p), reduce: 0 do
        acc -> if op == :increment, do: acc + n, else: acc - n
      end

    run_all(
      for p <- 1..20 do
        fn ->
          for {op, n} <- plan.(p) do
            {:ok, _} = apply(ContextStore, op, [store, :balance, n])
          end
        end
      end
    )

    assert {:ok, ^expected} = ContextStore.get(store, :balance)
    assert expected < 100_000 and expected != 0
  end

  @tag timeout: @timeout
  test "strict durability: concurrent increments are exact" do
    {store, opts} = store!([], durability: :strict)
    :ok = ContextStore.create(store, :c, :g_counter)

    run_all(
      for _ <- 1..10 do
        fn -> for _ <- 1..300, do: {:ok, _} = ContextStore.increment(store, :c) end
      end
    )

    assert {:ok, 3_000} = ContextStore.get(store, :c)
    stop_and_wait(store)
    assert {:ok, 3_000} = ContextStore.get(start_store!(opts), :c)
  end

  @tag timeout: @timeout
  test "concurrent adds of distinct elements from 20 processes are all present" do
    {store, opts} = store!()
    :ok = ContextStore.create(store, :set, :or_set)
    :ok = ContextStore.create(store, :aw, :aw_set)

    run_all(
      for p <- 1..20 do
        fn ->
          for i <- 1..500 do
            :ok = ContextStore.update(store, :set, {:add, {p, i}}, return: :ok)
            :ok = ContextStore.update(store, :aw, {:add, {p, i}}, return: :ok)
            # Each process also removes its own odd elements from :aw.
            if rem(i, 2) == 1,
              do: :ok = ContextStore.update(store, :aw, {:remove, {p, i}}, return: :ok)
          end
        end
      end
    )

    all = MapSet.new(for p <- 1..20, i <- 1..500, do: {p, i})
    evens = MapSet.new(for p <- 1..20, i <- 1..500, rem(i, 2) == 0, do: {p, i})
    assert {:ok, ^all} = ContextStore.get(store, :set)
    assert {:ok, ^evens} = ContextStore.get(store, :aw)

    stop_and_wait(store)
    store = start_store!(opts)
    assert {:ok, ^all} = ContextStore.get(store, :set)
    assert {:ok, ^evens} = ContextStore.get(store, :aw)
  end

  @tag timeout: @timeout
  test "concurrent creates of the same id: exactly one :ok" do
    # A fresh store (every id in memory) and one with tiny limits, where
    # existence is decided from disk and pending writes.
    for extra <- [[], [memory_limit: 2, ets_limit: 2]] do
      {store, _} = store!(extra)
      ids = for i <- 1..100, do: {:id, i}
      types = [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]

      results =
        run_all(
          for p <- 1..20 do
            fn ->
              type = Enum.at(types, rem(p, 5))
              for id <- ids, do: {id, ContextStore.create(store, id, type)}
            end
          end
        )
        |> List.flatten()

      for {id, rs} <- Enum.group_by(results, &elem(&1, 0), &elem(&1, 1)) do
        assert Enum.count(rs, &(&1 == :ok)) == 1, "#{inspect(id)}: #{inspect(rs)}"
        assert Enum.count(rs, &(&1 == {:error, :already_exists})) == 19
      end

      assert Enum.sort(ContextStore.list_crdts(store)) == Enum.sort(ids)
    end
  end

  @tag timeout: @timeout
  test "tiny limits: concurrent writers, readers and decay passes stay exact" do
    {store, opts} = store!(memory_limit: 10, ets_limit: 20, decay_interval: 3_600_000)
    n_ids = 200
    for i <- 1..n_ids, do: :ok = ContextStore.create(store, i, :g_counter)

    writers =
      for p <- 1..10 do
        fn ->
          for k <- 1..1_000 do
            id = rem(k * 7 + p, n_ids) + 1
            :ok = ContextStore.update(store, id, {:increment, p}, return: :ok)
          end

          :writer
        end
      end

    # Readers: a G-Counter never goes down.
    readers =
      for r <- 1..3 do
        fn ->
          Enum.reduce(1..2_000, %{}, fn k, seen ->
            id = rem(k * 13 + r, n_ids) + 1
            {:ok, v} = ContextStore.get(store, id)
            assert v >= Map.get(seen, id, 0), "id #{id} went from #{seen[id]} to #{v}"
            Map.put(seen, id, v)
          end)

          :reader
        end
      end

    decayer = fn ->
      for _ <- 1..50, do: :ok = ContextStore.decay_now(store)
      :decayer
    end

    run_all(writers ++ readers ++ [decayer])

    expected =
      for p <- 1..10, k <- 1..1_000, reduce: %{} do
        acc -> Map.update(acc, rem(k * 7 + p, n_ids) + 1, p, &(&1 + p))
      end

    check = fn store ->
      for i <- 1..n_ids do
        want = Map.get(expected, i, 0)
        assert {:ok, ^want} = ContextStore.get(store, i)
      end
    end

    check.(store)
    stats = ContextStore.stats(store)
    assert stats.hot <= 10 and stats.warm <= 20
    stop_and_wait(store)
    check.(start_store!(opts))
  end

  test "calls racing with a stop answer values or errors, never crash" do
    {store, _} = store!()
    :ok = ContextStore.create(store, :c, :g_counter)
    parent = self()

    callers =
      for _ <- 1..8 do
        spawn_link(fn ->
          results =
            Stream.repeatedly(fn -> ContextStore.increment(store, :c, 1) end)
            |> Enum.take_while(&match?({:ok, _}, &1))

          send(parent, {:stopped_with, self(), length(results)})

          # After the first error, every call keeps answering an error.
          for _ <- 1..100, do: {:error, _} = ContextStore.increment(store, :c, 1)
          send(parent, {:done, self()})
        end)
      end

    # Let the callers get going, then stop the store under them.
    eventually(fn -> match?({:ok, v} when v > 1_000, ContextStore.get(store, :c)) end)
    stop_and_wait(store)

    for pid <- callers do
      assert_receive {:stopped_with, ^pid, _}, 30_000
      assert_receive {:done, ^pid}, 30_000
    end
  end
end
