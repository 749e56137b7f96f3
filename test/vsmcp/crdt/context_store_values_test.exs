defmodule Vsmcp.CRDT.ContextStoreValuesTest do
  @moduledoc """
  Values as applications store them: maps, strings, floats and nested terms
  as register values and set elements.

  A register's `set/3` answers the caller's own term (the stored bytes are
  its encoding, so decoding them would give an equal term back), and the
  next `get/2` must equal it. Maps are encoded with their pairs in
  canonical order whatever order the VM iterates them in (small maps sorted
  by term order, large ones by hash), so a map built in any order is the
  same element.
  """
  use ExUnit.Case, async: true
  use ExUnitProperties

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  setup do
    dir = tmp_dir!("vsmcp_crdt_values")
    %{store: start_store!(node_id: :values, storage_opts: [data_dir: dir])}
  end

  # Terms an application keeps in a register: maps with atom, string and
  # integer keys (some past 32 keys, where the VM keeps them as hash
  # tries), floats, strings, lists and tuples, nested.
  defp value do
    leaf =
      one_of([
        integer(),
        float(),
        string(:printable, max_length: 80),
        atom(:alphanumeric),
        constant(nil)
      ])

    tree(leaf, fn inner ->
      one_of([
        list_of(inner, max_length: 4),
        map(list_of(inner, max_length: 3), &List.to_tuple/1),
        map_of(one_of([atom(:alphanumeric), string(:ascii), integer()]), inner, max_length: 40)
      ])
    end)
  end

  property "set answers the caller's own term, and get then equals it", %{store: store} do
    :ok = ContextStore.create(store, :reg, :lww_register)

    check all(v <- value(), max_runs: 200) do
      assert {:ok, answered} = ContextStore.set(store, :reg, v)
      assert answered === v
      assert {:ok, read} = ContextStore.get(store, :reg)
      assert read === v
    end
  end

  test "the four-key map of the host benchmark round-trips exactly", %{store: store} do
    :ok = ContextStore.create(store, :unit, :lww_register)
    v = %{id: 7, name: "unit-7", load: 3.5, tags: [:s1, :active]}
    assert {:ok, ^v} = ContextStore.set(store, :unit, v)
    assert {:ok, ^v} = ContextStore.get(store, :unit)
    assert {:ok, ^v} = ContextStore.set(store, :unit, v)
  end

  test "a map is one element whatever order it was built in", %{store: store} do
    :ok = ContextStore.create(store, :maps, :or_set)
    keys = for i <- 1..40, do: {:"k#{i}", i}
    # 40 keys: a hash trie, iterated in hash order; 4 keys: a sorted
    # flat map with keys of several lengths (canonical order is by bytes).
    large = Map.new(keys)
    large_reversed = keys |> Enum.reverse() |> Enum.into(%{})
    small = %{"str" => 4, id: 1, a_longer_key: 2, z: 3}

    small_rebuilt =
      %{"str" => 4} |> Map.put(:z, 3) |> Map.put(:a_longer_key, 2) |> Map.put(:id, 1)

    nested = %{outer: large, list: [small]}
    nested_rebuilt = %{list: [small_rebuilt], outer: large_reversed}

    for v <- [large, small, nested], do: {:ok, _} = ContextStore.add(store, :maps, v)

    for v <- [large_reversed, small_rebuilt, nested_rebuilt] do
      assert {:ok, true} = ContextStore.member?(store, :maps, v)
    end

    assert {:ok, set} = ContextStore.get(store, :maps)
    assert set == MapSet.new([large, small, nested])
    assert {:ok, set} = ContextStore.remove(store, :maps, nested_rebuilt)
    assert set == MapSet.new([large, small])
  end
end
