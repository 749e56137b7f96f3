defmodule Vsmcp.CRDT.ContextStoreHardeningTest do
  @moduledoc """
  Regression tests of the store-hardening issue (wrong results, data loss,
  naming rules), each written before its fix.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.Types.PNCounter

  setup do
    store = start_store!(storage_opts: [data_dir: tmp_dir!("vsmcp_crdt_hardening")])
    %{store: store}
  end

  describe "register values are read back exactly" do
    test "values that look like NIF replies or set values", %{store: s} do
      :ok = ContextStore.create(s, :r, :lww_register)

      values = [
        {:set, [1, 2]},
        {:set, "x"},
        {:set, []},
        :dirty,
        {:dirty, :value},
        {:dirty, 1},
        {:ok, 1},
        {:ok, {:set, [3]}},
        {:error, :not_found},
        {:error, {:storage_error, "x"}},
        :ok,
        nil,
        MapSet.new([1])
      ]

      for v <- values do
        assert ContextStore.set(s, :r, v) == {:ok, v}
        assert ContextStore.get(s, :r) == {:ok, v}
      end
    end

    test "set values are real MapSets, equal to MapSet.new/1 of their elements", %{store: s} do
      :ok = ContextStore.create(s, :s, :or_set)
      elements = [1, :a, "b", {:set, [1]}, [1, 2], %{k: 1}, 2.5, self()]
      for e <- elements, do: {:ok, _} = ContextStore.add(s, :s, e)
      {:ok, value} = ContextStore.get(s, :s)
      assert value == MapSet.new(elements)
      assert MapSet.size(value) == length(elements)
      assert Enum.all?(elements, &MapSet.member?(value, &1))
      assert :erlang.binary_to_term(:erlang.term_to_binary(value)) == MapSet.new(elements)
      assert MapSet.union(value, MapSet.new([:z])) |> MapSet.size() == length(elements) + 1
    end
  end

  describe "integer amounts apply exactly or are refused" do
    test "huge amounts give {:error, {:invalid_amount, n}} and change nothing", %{store: s} do
      :ok = ContextStore.create(s, :pn, :pn_counter)
      :ok = ContextStore.create(s, :g, :g_counter)
      {:ok, 5} = ContextStore.increment(s, :pn, 5)
      {:ok, 5} = ContextStore.increment(s, :g, 5)

      for n <- [-(2 ** 128 - 1), -(2 ** 127), 2 ** 64, 2 ** 128, -(2 ** 63) - 1, 1.5, :x, "1"] do
        assert ContextStore.increment(s, :pn, n) == {:error, {:invalid_amount, n}}
        assert ContextStore.decrement(s, :pn, n) == {:error, {:invalid_amount, n}}
        assert ContextStore.increment(s, :g, n) == {:error, {:invalid_amount, n}}
      end

      assert ContextStore.get(s, :pn) == {:ok, 5}
      assert ContextStore.get(s, :g) == {:ok, 5}
    end

    test "the largest amounts apply exactly; overflowing an entry is refused", %{store: s} do
      :ok = ContextStore.create(s, :pn, :pn_counter)
      max = 2 ** 64 - 1
      assert ContextStore.increment(s, :pn, max) == {:ok, max}
      assert ContextStore.increment(s, :pn, 1) == {:error, {:invalid_amount, 1}}
      assert ContextStore.decrement(s, :pn, -1) == {:error, {:invalid_amount, -1}}
      assert ContextStore.decrement(s, :pn, max) == {:ok, 0}
      assert ContextStore.get(s, :pn) == {:ok, 0}
      :ok = ContextStore.create(s, :q, :pn_counter)
      assert ContextStore.decrement(s, :q, -(2 ** 63)) == {:ok, 2 ** 63}
      assert ContextStore.increment(s, :q, -(2 ** 63)) == {:ok, 0}
    end

    test "the store and PNCounter.mutate/2 apply one rule to negative amounts", %{store: s} do
      :ok = ContextStore.create(s, :pn, :pn_counter)
      assert ContextStore.increment(s, :pn, -5) == {:ok, -5}
      {c, _delta} = PNCounter.mutate(PNCounter.new(:n), {:increment, -5})
      assert PNCounter.value(c) == -5
      {c, _delta} = PNCounter.mutate(c, {:decrement, -2})
      assert PNCounter.value(c) == -3

      assert PNCounter.mutate(c, {:increment, -(2 ** 127)}) ==
               {:error, {:invalid_amount, -(2 ** 127)}}
    end

    test "numeric options out of range are refused, not raised" do
      for {k, v} <- [memory_limit: 2 ** 64, ets_limit: 2 ** 70, access_threshold: 2 ** 33] do
        assert ContextStore.start_link(storage_opts: [{k, v}]) ==
                 {:error, {:invalid_option, k, v}}
      end
    end
  end

  describe "what names a store" do
    test "global and via names always mean a store, running or not", %{store: s} do
      :ok = ContextStore.create(s, {:global, :c}, :g_counter)
      assert ContextStore.increment({:global, :vsmcp_no_such_store}, :x) == {:error, :noproc}
      assert ContextStore.decrement({:via, :global, :vsmcp_nope}, :x) == {:error, :noproc}

      name = {:global, {:vsmcp_hardening, self()}}
      dir = tmp_dir!("vsmcp_crdt_global")
      g = start_store!(name: name, storage_opts: [data_dir: dir])
      :ok = ContextStore.create(name, :c, :g_counter)
      assert ContextStore.increment(name, :c) == {:ok, 1}
      assert ContextStore.increment(g, :c) == {:ok, 2}
      stop_and_wait(g)
      assert ContextStore.increment(name, :c) == {:error, :noproc}
      assert ContextStore.increment(g, :c) == {:error, :noproc}
      # The id `{:global, :c}` of `s` is reached with an explicit store.
      assert ContextStore.increment(s, {:global, :c}) == {:ok, 1}
    end

    test "a bare atom is a store only when a store is registered under it" do
      name = :"vsmcp_hardening_#{System.unique_integer([:positive])}"
      Process.register(self(), name)
      # A registered process that is not a store: `name` is an id of the
      # default store, which is not running here.
      assert ContextStore.increment(name, 1) == {:error, :noproc}
      Process.unregister(name)
    end
  end

  describe "mutation replies" do
    test "an add on a large set replies with the set right after it", %{store: s} do
      :ok = ContextStore.create(s, :big, :or_set)
      for i <- 1..20_000, do: :ok = ContextStore.update(s, :big, {:add, i}, return: :ok)
      {:ok, v} = ContextStore.add(s, :big, :new)
      assert MapSet.size(v) == 20_001 and MapSet.member?(v, :new)
      {:ok, v} = ContextStore.remove(s, :big, 1)
      assert MapSet.size(v) == 20_000 and not MapSet.member?(v, 1)
    end
  end

  describe "stored terms read back after a VM restart" do
    @tag timeout: 120_000
    test "run-time atoms, Latin-1 and Unicode atoms, improper lists, pids, refs, maps" do
      dir = tmp_dir!("vsmcp_crdt_terms")

      writer = """
      alias Vsmcp.CRDT.ContextStore
      {:ok, s} = ContextStore.start_link(storage_opts: [data_dir: #{inspect(dir)}])
      atom = String.to_atom("made_at_run_time_" <> Integer.to_string(System.unique_integer([:positive])))
      terms = [atom, :"caf\\u00e9", :"日本", [1 | 2], [1, 2 | :tail], {1, {2, {3, {}}}},
               %{"k" => {1}, a: %{b: [1]}}, self(), make_ref(), 2 ** 100, -1.5, <<1, 2, 3>>]
      :ok = ContextStore.create(s, :set, :aw_set)
      :ok = ContextStore.create(s, :reg, :lww_register)
      for t <- terms, do: {:ok, _} = ContextStore.add(s, :set, t)
      {:ok, _} = ContextStore.set(s, :reg, terms)
      :ok = ContextStore.create(s, {atom, [1 | 2]}, :g_counter)
      :ok = ContextStore.stop(s)
      IO.puts("TERMS " <> Base.encode64(:erlang.term_to_binary(terms)))
      """

      {out, 0} = run_elixir(writer)
      [_, b64] = Regex.run(~r/TERMS (\S+)/, out)

      reader = """
      alias Vsmcp.CRDT.ContextStore
      {:ok, s} = ContextStore.start_link(storage_opts: [data_dir: #{inspect(dir)}])
      {:ok, set} = ContextStore.get(s, :set)
      {:ok, reg} = ContextStore.get(s, :reg)
      ids = ContextStore.list_crdts(s)
      IO.puts("READ " <> Base.encode64(:erlang.term_to_binary({set, reg, ids})))
      """

      {out, 0} = run_elixir(reader)
      [_, read] = Regex.run(~r/READ (\S+)/, out)
      terms = :erlang.binary_to_term(Base.decode64!(b64))
      {set, reg, ids} = :erlang.binary_to_term(Base.decode64!(read))
      assert set == MapSet.new(terms)
      assert reg == terms
      [atom | _] = terms
      assert Enum.sort(ids) == Enum.sort([:set, :reg, {atom, [1 | 2]}])
    end
  end

  test "a store with no location uses a fresh random directory and removes it at stop" do
    {:ok, s} = ContextStore.start_link([])
    %{path: path} = ContextStore.stats(s)
    assert File.dir?(path)
    refute path =~ System.pid()
    :ok = ContextStore.stop(s)
    refute File.exists?(path)
  end

  @tag timeout: 120_000
  test "a store with no location leaves nothing behind when the VM halts" do
    script = """
    {:ok, s} = Vsmcp.CRDT.ContextStore.start_link([])
    :ok = Vsmcp.CRDT.ContextStore.create(s, :c, :g_counter)
    {:ok, 1} = Vsmcp.CRDT.ContextStore.increment(s, :c)
    IO.puts("PATH " <> Vsmcp.CRDT.ContextStore.stats(s).path)
    System.halt()
    """

    {out, 0} = run_elixir(script)
    [_, path] = Regex.run(~r/PATH (\S+)/, out)
    refute File.exists?(path)
  end
end
