defmodule Vsmcp.CRDT.ContextStoreTest do
  @moduledoc """
  The API contract of `Vsmcp.CRDT.ContextStore`: the drop-in suite of the
  application it replaces, then the additions (add-wins sets, errors as
  values, any term as id or value, metadata, delete, `return: :ok`).

  Stores that use the application's default store (`Vsmcp.CRDT.Supervisor`)
  are in `Vsmcp.CRDT.ContextStoreDefaultStoreTest` below (not async: the
  default store has a global name).
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  describe "drop-in contract (the replaced application's suite)" do
    setup do
      dir = tmp_dir!("vsmcp_crdt_dropin")
      dets_file = Path.join(dir, "test_crdt.dets")

      {:ok, store} =
        ContextStore.start_link(
          node_id: :test_node,
          storage_opts: [
            ets_name: :test_crdt_ets,
            dets_name: :test_crdt_dets,
            dets_file: dets_file
          ]
        )

      on_exit(fn -> File.rm(dets_file) end)
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
      assert MapSet.member?(set, "banana")
      assert {:ok, ^set} = ContextStore.get(store, :set1)
    end

    test "an OR-Set element added twice and removed once is gone", %{store: store} do
      assert :ok = ContextStore.create(store, :set2, :or_set)
      assert {:ok, _} = ContextStore.add(store, :set2, "item")
      assert {:ok, _} = ContextStore.add(store, :set2, "item")
      assert {:ok, set} = ContextStore.remove(store, :set2, "item")
      refute MapSet.member?(set, "item")
      assert {:ok, set} = ContextStore.get(store, :set2)
      assert MapSet.size(set) == 0
    end

    test "creates and sets an LWW-Register", %{store: store} do
      assert :ok = ContextStore.create(store, :register1, :lww_register)
      assert {:ok, nil} = ContextStore.get(store, :register1)
      assert {:ok, "hello"} = ContextStore.set(store, :register1, "hello")
      assert {:ok, "world"} = ContextStore.set(store, :register1, "world")
      assert {:ok, "world"} = ContextStore.get(store, :register1)
    end

    test "an LWW-Register holds complex values", %{store: store} do
      value = %{user: "alice", roles: [:admin, :editor], settings: %{theme: "dark", n: 3}}
      assert :ok = ContextStore.create(store, :register2, :lww_register)
      assert {:ok, ^value} = ContextStore.set(store, :register2, value)
      assert {:ok, ^value} = ContextStore.get(store, :register2)
    end

    test "creating an existing id fails", %{store: store} do
      assert :ok = ContextStore.create(store, :dup, :g_counter)
      assert {:error, :already_exists} = ContextStore.create(store, :dup, :g_counter)
      assert {:error, :already_exists} = ContextStore.create(store, :dup, :or_set)
    end

    test "missing ids are not found", %{store: store} do
      assert {:error, :not_found} = ContextStore.get(store, :nonexistent)
      assert {:error, :not_found} = ContextStore.increment(store, :nonexistent)
      assert {:error, :not_found} = ContextStore.get_metadata(store, :nonexistent)
    end

    test "lists CRDTs", %{store: store} do
      assert ContextStore.list_crdts(store) == []
      :ok = ContextStore.create(store, :c1, :g_counter)
      :ok = ContextStore.create(store, :c2, :pn_counter)
      :ok = ContextStore.create(store, :s1, :or_set)
      crdts = ContextStore.list_crdts(store)
      assert length(crdts) == 3
      assert :c1 in crdts
      assert :c2 in crdts
      assert :s1 in crdts
    end

    test "keeps metadata", %{store: store} do
      before = System.system_time(:millisecond)
      :ok = ContextStore.create(store, :meta_test, :g_counter)
      after_create = System.system_time(:millisecond)
      assert {:ok, metadata} = ContextStore.get_metadata(store, :meta_test)
      assert metadata.type == :g_counter
      assert metadata.created_by == :test_node
      assert is_integer(metadata.created_at)
      assert metadata.created_at >= before and metadata.created_at <= after_create
    end
  end

  describe "the legacy relative dets_file" do
    # The replaced suite used exactly this relative file name (in the working
    # directory). Its marker and its data directory are removed afterwards.
    setup do
      on_exit(&remove_relative_store_files/0)
      :ok
    end

    test "\"test_crdt.dets\" relative to the working directory works and is cleaned up" do
      {:ok, store} =
        ContextStore.start_link(
          node_id: :test_node,
          storage_opts: [
            ets_name: :test_crdt_ets,
            dets_name: :test_crdt_dets,
            dets_file: "test_crdt.dets"
          ]
        )

      assert File.regular?("test_crdt.dets")
      assert ContextStore.stats(store).path |> String.starts_with?(real_path(File.cwd!()))
      assert :ok = ContextStore.create(store, :counter1, :g_counter)
      assert {:ok, 1} = ContextStore.increment(store, :counter1)
      assert {:ok, 6} = ContextStore.increment(store, :counter1, 5)
      stop_and_wait(store)
    end
  end

  defp remove_relative_store_files do
    File.rm("test_crdt.dets")

    for dir <- Path.wildcard(".test_crdt.dets.*.rocksdb", match_dot: true) do
      rm_rf_eventually(dir)
    end

    assert Path.wildcard("{.,}test_crdt.dets*", match_dot: true) == []
  end

  describe "additions to the contract" do
    setup do
      dir = tmp_dir!("vsmcp_crdt_api")
      store = start_store!(node_id: :api_node, storage_opts: [data_dir: dir])
      %{store: store, dir: dir}
    end

    test "an add-wins set keeps the element of a concurrent add, and behaves as a set",
         %{store: store} do
      assert :ok = ContextStore.create(store, :aw, :aw_set)
      assert {:ok, %MapSet{} = set} = ContextStore.get(store, :aw)
      assert MapSet.size(set) == 0
      assert {:ok, _} = ContextStore.add(store, :aw, "x")
      assert {:ok, _} = ContextStore.add(store, :aw, "y")
      assert {:ok, set} = ContextStore.remove(store, :aw, "x")
      assert set == MapSet.new(["y"])
      assert {:ok, set} = ContextStore.add(store, :aw, "x")
      assert set == MapSet.new(["x", "y"])
      assert {:ok, %{type: :aw_set}} = ContextStore.get_metadata(store, :aw)
      assert {:ok, true} = ContextStore.member?(store, :aw, "x")
    end

    test "an unknown type is refused", %{store: store} do
      assert {:error, {:unknown_type, :bogus}} = ContextStore.create(store, :x, :bogus)
      assert {:error, {:unknown_type, "g_counter"}} = ContextStore.create(store, :x, "g_counter")

      assert {:error, {:unknown_type, {:g_counter}}} =
               ContextStore.create(store, :x, {:g_counter})

      assert {:error, :not_found} = ContextStore.get(store, :x)
      assert ContextStore.list_crdts(store) == []
    end

    test "operations that do not fit the type are refused", %{store: store} do
      :ok = ContextStore.create(store, :gc, :g_counter)
      :ok = ContextStore.create(store, :pn, :pn_counter)
      :ok = ContextStore.create(store, :or, :or_set)
      :ok = ContextStore.create(store, :aw, :aw_set)
      :ok = ContextStore.create(store, :reg, :lww_register)

      cases = [
        {:gc, :g_counter, {:add, 1}},
        {:gc, :g_counter, {:decrement, 1}},
        {:gc, :g_counter, {:set, 1}},
        {:gc, :g_counter, {:remove, 1}},
        {:pn, :pn_counter, {:add, "e"}},
        {:pn, :pn_counter, {:set, "v"}},
        {:or, :or_set, {:increment, 1}},
        {:or, :or_set, {:set, 1}},
        {:aw, :aw_set, {:decrement, 1}},
        {:reg, :lww_register, {:increment, 1}},
        {:reg, :lww_register, {:add, 1}}
      ]

      for {id, type, op} <- cases do
        assert ContextStore.update(store, id, op) == {:error, {:unsupported_operation, type, op}},
               "#{inspect(op)} on #{type}"
      end

      for id_type <- [gc: :g_counter, or: :or_set, reg: :lww_register],
          op <- [:foo, {:bar, 1}, {:increment}, {:increment, 1, 2}, "inc", 42, {"add", 1}, []] do
        {id, type} = id_type

        assert ContextStore.update(store, id, op) == {:error, {:unsupported_operation, type, op}},
               "#{inspect(op)} on #{type}"
      end

      assert {:error, {:unsupported_operation, :g_counter, {:add, :e}}} =
               ContextStore.add(store, :gc, :e)

      assert {:error, {:unsupported_operation, :g_counter, {:decrement, 1}}} =
               ContextStore.decrement(store, :gc)

      assert {:error, {:unsupported_operation, :g_counter, {:decrement, 4}}} =
               ContextStore.decrement(store, :gc, 4)

      assert {:error, {:unsupported_operation, :lww_register, {:increment, 1}}} =
               ContextStore.increment(store, :reg)

      # Nothing changed.
      assert {:ok, 0} = ContextStore.get(store, :gc)
      assert {:ok, nil} = ContextStore.get(store, :reg)
      assert {:ok, set} = ContextStore.get(store, :or)
      assert MapSet.size(set) == 0
    end

    test "garbage operations on a missing id are not found", %{store: store} do
      assert {:error, :not_found} = ContextStore.update(store, :missing, :foo)
      assert {:error, :not_found} = ContextStore.update(store, :missing, {:increment, 1})
      assert {:error, :not_found} = ContextStore.add(store, :missing, 1)
      assert {:error, :not_found} = ContextStore.set(store, :missing, 1)
      assert {:error, :not_found} = ContextStore.member?(store, :missing, 1)
      assert {:error, :not_found} = ContextStore.delete(store, :missing)
    end

    test "member?/3", %{store: store} do
      :ok = ContextStore.create(store, :s, :or_set)
      assert {:ok, false} = ContextStore.member?(store, :s, "a")
      {:ok, _} = ContextStore.add(store, :s, "a")
      assert {:ok, true} = ContextStore.member?(store, :s, "a")
      assert {:ok, false} = ContextStore.member?(store, :s, "b")
      assert {:ok, false} = ContextStore.member?(store, :s, :a)
      {:ok, _} = ContextStore.remove(store, :s, "a")
      assert {:ok, false} = ContextStore.member?(store, :s, "a")

      :ok = ContextStore.create(store, :c, :g_counter)

      assert {:error, {:unsupported_operation, :g_counter, {:member?, "a"}}} =
               ContextStore.member?(store, :c, "a")
    end

    test "delete/2, then the id is gone, and creating it again starts fresh", %{store: store} do
      :ok = ContextStore.create(store, :d, :pn_counter)
      {:ok, 7} = ContextStore.increment(store, :d, 7)
      :ok = ContextStore.create(store, :keep, :g_counter)
      assert :ok = ContextStore.delete(store, :d)
      assert {:error, :not_found} = ContextStore.get(store, :d)
      assert {:error, :not_found} = ContextStore.get_metadata(store, :d)
      assert {:error, :not_found} = ContextStore.increment(store, :d)
      assert {:error, :not_found} = ContextStore.delete(store, :d)
      assert ContextStore.list_crdts(store) == [:keep]

      assert :ok = ContextStore.create(store, :d, :or_set)
      assert {:ok, set} = ContextStore.get(store, :d)
      assert MapSet.size(set) == 0
      assert {:ok, %{type: :or_set}} = ContextStore.get_metadata(store, :d)
      assert Enum.sort(ContextStore.list_crdts(store)) == [:d, :keep]

      :ok = ContextStore.delete(store, :d)
      assert :ok = ContextStore.create(store, :d, :pn_counter)
      assert {:ok, 0} = ContextStore.get(store, :d)
      assert {:ok, -1} = ContextStore.decrement(store, :d)
    end

    test "ids of every shape round trip exactly", %{store: store} do
      ids = sample_terms()

      for id <- ids do
        assert :ok = ContextStore.create(store, id, :g_counter), inspect(id)
      end

      for {id, i} <- Enum.with_index(ids, 1) do
        assert {:ok, ^i} = ContextStore.increment(store, id, i)
      end

      for {id, i} <- Enum.with_index(ids, 1) do
        assert {:ok, ^i} = ContextStore.get(store, id), inspect(id)
      end

      listed = ContextStore.list_crdts(store)
      assert length(listed) == length(ids)
      assert Enum.sort(listed) == Enum.sort(ids)
      # Exact: === (1 and 1.0 are different ids).
      for id <- ids, do: assert(Enum.any?(listed, &(&1 === id)), inspect(id))
    end

    test "integer and float ids are distinct", %{store: store} do
      :ok = ContextStore.create(store, 1, :g_counter)
      :ok = ContextStore.create(store, 1.0, :pn_counter)
      {:ok, _} = ContextStore.increment(store, 1, 5)
      {:ok, _} = ContextStore.decrement(store, 1.0, 5)
      assert {:ok, 5} = ContextStore.get(store, 1)
      assert {:ok, -5} = ContextStore.get(store, 1.0)
    end

    test "values and elements of every shape round trip exactly", %{store: store} do
      values = sample_terms()
      :ok = ContextStore.create(store, :reg, :lww_register)
      :ok = ContextStore.create(store, :set, :or_set)

      for v <- values do
        assert {:ok, got} = ContextStore.set(store, :reg, v)
        assert got === v
        assert {:ok, got} = ContextStore.get(store, :reg)
        assert got === v
        assert {:ok, _} = ContextStore.add(store, :set, v)
        assert {:ok, true} = ContextStore.member?(store, :set, v), inspect(v)
      end

      assert {:ok, set} = ContextStore.get(store, :set)
      assert MapSet.size(set) == length(Enum.uniq(values))
      for v <- values, do: assert(Enum.any?(set, &(&1 === v)), inspect(v))
    end

    test "update with return: :ok answers :ok", %{store: store} do
      :ok = ContextStore.create(store, :c, :g_counter)
      :ok = ContextStore.create(store, :s, :or_set)
      :ok = ContextStore.create(store, :r, :lww_register)
      assert :ok = ContextStore.update(store, :c, {:increment, 3}, return: :ok)
      assert :ok = ContextStore.update(store, :s, {:add, "e"}, return: :ok)
      assert :ok = ContextStore.update(store, :r, {:set, "v"}, return: :ok)
      assert {:ok, 3} = ContextStore.get(store, :c)
      assert {:ok, %MapSet{}} = ContextStore.get(store, :s)
      assert {:ok, true} = ContextStore.member?(store, :s, "e")
      assert {:ok, "v"} = ContextStore.get(store, :r)
      assert {:error, :not_found} = ContextStore.update(store, :missing, {:add, 1}, return: :ok)

      assert {:error, {:unsupported_operation, :g_counter, {:add, 1}}} =
               ContextStore.update(store, :c, {:add, 1}, return: :ok)
    end

    test "a set too large to build inline still returns its value", %{store: store} do
      :ok = ContextStore.create(store, :big, :or_set)
      for i <- 1..2_500, do: :ok = ContextStore.update(store, :big, {:add, i}, return: :ok)
      assert {:ok, set} = ContextStore.add(store, :big, 0)
      assert set == MapSet.new(0..2_500)
      assert {:ok, ^set} = ContextStore.get(store, :big)
    end

    test "metadata has type, created_by, created_at, updated_at and tier", %{store: store} do
      t0 = System.system_time(:millisecond)
      :ok = ContextStore.create(store, :m, :pn_counter)
      assert {:ok, meta} = ContextStore.get_metadata(store, :m)
      assert %{type: :pn_counter, created_by: :api_node, tier: tier} = meta
      assert tier in [:hot, :warm, :cold]
      assert is_integer(meta.created_at) and meta.created_at >= t0
      assert is_integer(meta.updated_at) and meta.updated_at >= meta.created_at

      # updated_at moves with writes (poll until the wall clock has ticked).
      eventually(fn -> System.system_time(:millisecond) > meta.updated_at end)
      {:ok, _} = ContextStore.increment(store, :m)
      assert {:ok, meta2} = ContextStore.get_metadata(store, :m)
      assert meta2.created_at == meta.created_at
      assert meta2.updated_at > meta.updated_at
    end

    test "the store may be given by registered name" do
      dir = tmp_dir!("vsmcp_crdt_named")
      name = :"vsmcp_named_store_#{System.unique_integer([:positive])}"
      pid = start_store!(name: name, storage_opts: [data_dir: dir])
      assert Process.whereis(name) == pid
      assert :ok = ContextStore.create(name, :hits, :g_counter)
      # increment(store, id) with a registered store name means (store, id).
      assert {:ok, 1} = ContextStore.increment(name, :hits)
      assert {:ok, 2} = ContextStore.increment(pid, :hits)
      assert {:ok, 12} = ContextStore.increment(name, :hits, 10)
      assert {:ok, 12} = ContextStore.get(name, :hits)
      assert [:hits] = ContextStore.list_crdts(name)
      assert :ok = ContextStore.sync(name)
    end

    test "increment(store_pid, id) and decrement(store_pid, id) mean (store, id)", %{store: store} do
      :ok = ContextStore.create(store, :hits, :pn_counter)
      assert {:ok, 1} = ContextStore.increment(store, :hits)
      assert {:ok, 2} = ContextStore.increment(store, :hits)
      assert {:ok, 1} = ContextStore.decrement(store, :hits)
    end

    test "stats/1 returns a map", %{store: store, dir: dir} do
      :ok = ContextStore.create(store, :a, :g_counter)
      stats = ContextStore.stats(store)
      assert is_map(stats)
      assert %{hot: hot, warm: warm, pending_writes: pending, path: path, hlc: {_, _}} = stats
      assert hot + warm == 1
      assert is_integer(pending)
      assert real_path(path) == real_path(dir)
      assert stats.node_id == :api_node
      assert stats.durability == :relaxed
    end

    test "sync/1 writes pending writes", %{store: store} do
      :ok = ContextStore.create(store, :a, :g_counter)
      {:ok, _} = ContextStore.increment(store, :a)
      assert :ok = ContextStore.sync(store)
      assert ContextStore.stats(store).pending_writes == 0
    end

    test "child_spec/1 starts a store under a supervisor" do
      dir = tmp_dir!("vsmcp_crdt_child")
      pid = start_supervised!({ContextStore, storage_opts: [data_dir: dir]})
      assert :ok = ContextStore.create(pid, :x, :g_counter)

      assert %{id: ContextStore, start: {ContextStore, :start_link, [_]}} =
               ContextStore.child_spec([])

      assert %{id: :my_name} = ContextStore.child_spec(name: :my_name)
    end

    test "a store without a location keeps its data in a temporary directory removed on stop" do
      {:ok, store} = ContextStore.start_link([])
      path = ContextStore.stats(store).path
      assert File.dir?(path)
      :ok = ContextStore.create(store, :x, :g_counter)
      assert {:ok, 1} = ContextStore.increment(store, :x)
      assert ContextStore.stats(store).node_id == node()
      stop_and_wait(store)

      eventually(
        fn ->
          # Drop this process's last reference to the store's handle.
          :erlang.garbage_collect()
          not File.exists?(path)
        end,
        message: "ephemeral directory not removed"
      )
    end
  end

  # Terms of every shape, all distinct under ===.
  defp sample_terms do
    big_map = Map.new(1..40, fn i -> {"key#{i}", %{i: i, l: [i, {i}]}} end)

    [
      :atom,
      :"an atom with spaces",
      :ünïcödé,
      nil,
      true,
      false,
      "string",
      "",
      "ünïcödé ✓",
      <<0, 255, 1>>,
      <<1::3>>,
      0,
      1,
      -1,
      42,
      9_223_372_036_854_775_807,
      -9_223_372_036_854_775_808,
      9_223_372_036_854_775_808,
      -9_223_372_036_854_775_809,
      2 ** 200,
      -(2 ** 200),
      1.0,
      -2.5,
      3.141592653589793,
      1.0e300,
      {},
      {1},
      {:a, "b", 3, 4.0},
      {:nested, {:tuple, {:deep, [1, 2, %{x: 3}]}}},
      [],
      [1, 2, 3],
      ~c"charlist",
      [1 | 2],
      [:a, [:b, [:c, []]]],
      %{},
      %{a: 1, b: %{c: [1, 2, {3}]}},
      %{{1, 2} => "tuple key", [1] => "list key", 1.5 => :float_key},
      big_map,
      %{outer: big_map},
      MapSet.new([1, 2, 3]),
      self(),
      spawn(fn -> :ok end),
      make_ref()
    ]
  end
end

defmodule Vsmcp.CRDT.ContextStoreDefaultStoreTest do
  @moduledoc """
  The application's default store (`Vsmcp.CRDT.Supervisor`, registered as
  `Vsmcp.CRDT.ContextStore`) and its coexistence with anonymous stores.
  Not async: the default store and its supervisor have global names.
  """
  use ExUnit.Case, async: false

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  # The other doctests of the module are in doctest_test.exs.
  doctest Vsmcp.CRDT.Supervisor, only: [start_link: 1]

  setup do
    for app <- [:vsmcp, :vsmcp_crdt] do
      previous = Application.get_env(app, ContextStore)
      Application.delete_env(app, ContextStore)

      on_exit(fn ->
        if previous,
          do: Application.put_env(app, ContextStore, previous),
          else: Application.delete_env(app, ContextStore)
      end)
    end

    :ok
  end

  test "the documented default-store forms" do
    dir = tmp_dir!("vsmcp_crdt_default")
    start_supervised!({Vsmcp.CRDT.Supervisor, storage_opts: [data_dir: dir]})
    assert is_pid(Process.whereis(ContextStore))

    assert :ok = ContextStore.create(:page_views, :g_counter)
    assert {:ok, 1} = ContextStore.increment(:page_views)
    assert {:ok, 6} = ContextStore.increment(:page_views, 5)
    assert {:ok, 6} = ContextStore.get(:page_views)

    assert :ok = ContextStore.create(:balance, :pn_counter)
    assert {:ok, -1} = ContextStore.decrement(:balance)
    assert {:ok, -4} = ContextStore.decrement(:balance, 3)

    assert :ok = ContextStore.create(:tags, :or_set)
    assert {:ok, _} = ContextStore.add(:tags, "a")
    assert {:ok, true} = ContextStore.member?(:tags, "a")
    assert {:ok, set} = ContextStore.remove(:tags, "a")
    assert MapSet.size(set) == 0

    assert :ok = ContextStore.create(:name, :lww_register)
    assert {:ok, "v"} = ContextStore.set(:name, "v")
    assert {:ok, "v"} = ContextStore.update(:name, {:set, "v"})

    assert {:ok, %{type: :g_counter, created_by: node_id}} =
             ContextStore.get_metadata(:page_views)

    assert node_id == node()

    assert Enum.sort(ContextStore.list_crdts()) ==
             Enum.sort([:page_views, :balance, :tags, :name])

    assert :ok = ContextStore.sync()
    assert :ok = ContextStore.delete(:name)
    assert {:error, :not_found} = ContextStore.get(:name)
    assert is_map(ContextStore.stats())
  end

  test "without a default store, the default forms answer an error" do
    refute Process.whereis(ContextStore)
    assert {:error, :noproc} = ContextStore.get(:anything)
    assert {:error, :noproc} = ContextStore.create(:anything, :g_counter)
    assert {:error, :noproc} = ContextStore.increment(:anything)
    assert {:error, :noproc} = ContextStore.increment(:anything, 2)
    assert {:error, :noproc} = ContextStore.list_crdts()
  end

  test "options come from the application environment" do
    dir = tmp_dir!("vsmcp_crdt_env")

    Application.put_env(:vsmcp, ContextStore,
      node_id: :from_vsmcp_env,
      storage_opts: [memory_limit: 5000, data_dir: Path.join(dir, "ignored")]
    )

    Application.put_env(:vsmcp_crdt, ContextStore, storage_opts: [data_dir: dir, ets_limit: 7])

    opts = Vsmcp.CRDT.Supervisor.store_options()
    assert opts[:name] == ContextStore
    assert opts[:node_id] == :from_vsmcp_env
    assert opts[:storage_opts][:data_dir] == dir
    assert opts[:storage_opts][:ets_limit] == 7

    start_supervised!(Vsmcp.CRDT.Supervisor)
    assert :ok = ContextStore.create(:x, :g_counter)
    assert {:ok, %{created_by: :from_vsmcp_env}} = ContextStore.get_metadata(:x)
    assert real_path(ContextStore.stats().path) == real_path(dir)
  end

  test "the default location is data/crdt_storage.dets" do
    opts = Vsmcp.CRDT.Supervisor.store_options()
    assert opts[:storage_opts][:dets_file] == "data/crdt_storage.dets"
    assert opts[:node_id] == node()
    assert opts[:name] == ContextStore

    opts = Vsmcp.CRDT.Supervisor.store_options(storage_opts: [data_dir: "elsewhere"])
    refute Keyword.has_key?(opts[:storage_opts], :dets_file)
  end

  test "the default store and anonymous stores with the same legacy names coexist" do
    dir = tmp_dir!("vsmcp_crdt_coexist")

    start_supervised!(
      {Vsmcp.CRDT.Supervisor, storage_opts: [data_dir: Path.join(dir, "default")]}
    )

    stores =
      for i <- 1..3 do
        start_store!(
          node_id: :"anon_#{i}",
          storage_opts: [
            ets_name: :test_crdt_ets,
            dets_name: :test_crdt_dets,
            dets_file: Path.join([dir, "anon_#{i}", "test_crdt.dets"])
          ]
        )
      end

    assert :ok = ContextStore.create(:hits, :g_counter)
    assert {:ok, 100} = ContextStore.increment(:hits, 100)

    for {store, i} <- Enum.with_index(stores, 1) do
      assert :ok = ContextStore.create(store, :hits, :g_counter)
      # increment(store_pid, id) on an anonymous store means (store, id).
      for _ <- 1..i, do: assert({:ok, _} = ContextStore.increment(store, :hits))
      assert :ok = ContextStore.create(store, {:only_in, i}, :or_set)
    end

    assert {:ok, 100} = ContextStore.get(:hits)
    assert ContextStore.list_crdts() == [:hits]

    for {store, i} <- Enum.with_index(stores, 1) do
      assert {:ok, ^i} = ContextStore.get(store, :hits)
      assert Enum.sort(ContextStore.list_crdts(store)) == Enum.sort([:hits, {:only_in, i}])
      assert {:ok, %{created_by: created_by}} = ContextStore.get_metadata(store, :hits)
      assert created_by == :"anon_#{i}"
    end

    paths =
      [ContextStore.stats() | Enum.map(stores, &ContextStore.stats/1)] |> Enum.map(& &1.path)

    assert length(Enum.uniq(paths)) == 4
  end
end
