defmodule Vsmcp.CRDT.ContextStoreTest do
  # The replaced application's test file, unchanged in spirit: every test
  # opens a store on the relative "test_crdt.dets" (in the working
  # directory), linked to the test process, and never stops it; `on_exit`
  # removes the file. The last test's store is still closing when the suite
  # ends and the VM halts.
  use ExUnit.Case

  alias Vsmcp.CRDT.ContextStore

  setup do
    {:ok, store} =
      ContextStore.start_link(
        storage_opts: [
          ets_name: :test_crdt_ets,
          dets_name: :test_crdt_dets,
          dets_file: "test_crdt.dets"
        ]
      )

    on_exit(fn -> File.rm("test_crdt.dets") end)
    %{store: store}
  end

  test "creates and increments a G-Counter", %{store: store} do
    assert :ok = ContextStore.create(store, :counter1, :g_counter)
    assert {:ok, 1} = ContextStore.increment(store, :counter1)
    assert {:ok, 6} = ContextStore.increment(store, :counter1, 5)
    assert {:ok, 6} = ContextStore.get(store, :counter1)
  end

  test "a G-Counter cannot be decreased", %{store: store} do
    assert :ok = ContextStore.create(store, :counter2, :g_counter)
    assert {:ok, 0} = ContextStore.increment(store, :counter2, -5)
    assert {:ok, 0} = ContextStore.get(store, :counter2)
  end

  test "creates and updates a PN-Counter", %{store: store} do
    assert :ok = ContextStore.create(store, :pn_counter, :pn_counter)
    assert {:ok, 5} = ContextStore.increment(store, :pn_counter, 5)
    assert {:ok, 2} = ContextStore.decrement(store, :pn_counter, 3)
    assert {:ok, -3} = ContextStore.decrement(store, :pn_counter, 5)
    assert {:ok, -3} = ContextStore.get(store, :pn_counter)
  end

  test "creates and modifies an OR-Set", %{store: store} do
    assert :ok = ContextStore.create(store, :set1, :or_set)
    assert {:ok, set} = ContextStore.add(store, :set1, "apple")
    assert MapSet.member?(set, "apple")
    assert {:ok, set} = ContextStore.add(store, :set1, "banana")
    assert MapSet.equal?(set, MapSet.new(["apple", "banana"]))
    assert {:ok, set} = ContextStore.remove(store, :set1, "apple")
    refute MapSet.member?(set, "apple")
    assert {:ok, ^set} = ContextStore.get(store, :set1)
  end

  test "an OR-Set element added twice and removed once is gone", %{store: store} do
    assert :ok = ContextStore.create(store, :set2, :or_set)
    assert {:ok, _} = ContextStore.add(store, :set2, "item")
    assert {:ok, _} = ContextStore.add(store, :set2, "item")
    assert {:ok, set} = ContextStore.remove(store, :set2, "item")
    refute MapSet.member?(set, "item")
  end

  test "an OR-Set answers membership", %{store: store} do
    assert :ok = ContextStore.create(store, :set3, :or_set)
    assert {:ok, _} = ContextStore.add(store, :set3, :x)
    assert {:ok, true} = ContextStore.member?(store, :set3, :x)
    assert {:ok, false} = ContextStore.member?(store, :set3, :y)
  end

  test "creates and sets an LWW-Register", %{store: store} do
    assert :ok = ContextStore.create(store, :register1, :lww_register)
    assert {:ok, nil} = ContextStore.get(store, :register1)
    assert {:ok, "hello"} = ContextStore.set(store, :register1, "hello")
    assert {:ok, "world"} = ContextStore.set(store, :register1, "world")
    assert {:ok, "world"} = ContextStore.get(store, :register1)
  end

  test "an LWW-Register holds complex values", %{store: store} do
    value = %{user: "alice", roles: [:admin, :editor], settings: %{theme: "dark"}}
    assert :ok = ContextStore.create(store, :register2, :lww_register)
    assert {:ok, ^value} = ContextStore.set(store, :register2, value)
    assert {:ok, ^value} = ContextStore.get(store, :register2)
  end

  test "creating an existing id fails", %{store: store} do
    assert :ok = ContextStore.create(store, :dup, :g_counter)
    assert {:error, :already_exists} = ContextStore.create(store, :dup, :g_counter)
  end

  test "missing ids are not found", %{store: store} do
    assert {:error, :not_found} = ContextStore.get(store, :nonexistent)
    assert {:error, :not_found} = ContextStore.increment(store, :nonexistent)
  end

  test "lists CRDTs", %{store: store} do
    :ok = ContextStore.create(store, :c1, :g_counter)
    :ok = ContextStore.create(store, :c2, :pn_counter)
    :ok = ContextStore.create(store, :s1, :or_set)
    assert Enum.sort(ContextStore.list_crdts(store)) == [:c1, :c2, :s1]
  end

  test "keeps metadata", %{store: store} do
    :ok = ContextStore.create(store, :meta_test, :g_counter)
    assert {:ok, metadata} = ContextStore.get_metadata(store, :meta_test)
    assert metadata.type == :g_counter
    assert metadata.created_by == node()
  end

  test "concurrent increments from many processes all count", %{store: store} do
    :ok = ContextStore.create(store, :concurrent, :g_counter)

    1..10
    |> Task.async_stream(fn _ ->
      for _ <- 1..100, do: {:ok, _} = ContextStore.increment(store, :concurrent)
    end)
    |> Stream.run()

    assert {:ok, 1000} = ContextStore.get(store, :concurrent)
  end
end
