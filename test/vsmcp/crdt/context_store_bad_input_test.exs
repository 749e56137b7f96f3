defmodule Vsmcp.CRDT.ContextStoreBadInputTest do
  @moduledoc """
  `Vsmcp.CRDT.ContextStore` facing bad input: corrupt or foreign data
  locations, invalid options, a failing disk, values over
  `max_value_bytes`, random and absurdly deep terms, and calls on a stopped
  store. Every case is an `{:error, reason}` value; nothing crashes the
  caller or the store.
  """
  use ExUnit.Case, async: true
  use ExUnitProperties

  import Bitwise
  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.HostileTerms

  # `reason` names `path` (as given, expanded, or with symlinks resolved).
  defp assert_names_path(reason, path) do
    text = inspect(reason, limit: :infinity, printable_limit: :infinity)

    assert Enum.any?(
             Enum.uniq([path, Path.expand(path), real_path(path)]),
             &String.contains?(text, &1)
           ),
           "#{text} does not name #{path}"
  end

  defp garble!(file) do
    %{size: size} = File.stat!(file)
    File.write!(file, :crypto.strong_rand_bytes(max(size, 64)))
  end

  describe "a corrupt data location" do
    test "a data_dir holding junk files is refused, naming the path" do
      dir = tmp_dir!("vsmcp_crdt_junk")

      for i <- 1..3,
          do: File.write!(Path.join(dir, "junk#{i}.bin"), :crypto.strong_rand_bytes(100))

      assert {:error, reason} = ContextStore.start_link(storage_opts: [data_dir: dir])
      assert_names_path(reason, dir)
      # The junk is left alone.
      assert length(File.ls!(dir)) == 3
    end

    test "a data_dir with a junk CURRENT file is refused, naming the path" do
      dir = tmp_dir!("vsmcp_crdt_junk_current")
      File.write!(Path.join(dir, "CURRENT"), :crypto.strong_rand_bytes(100))
      assert {:error, reason} = ContextStore.start_link(storage_opts: [data_dir: dir])
      assert_names_path(reason, dir)
    end

    test "a data_dir that is a regular file is refused, naming the path" do
      file = Path.join(tmp_dir!("vsmcp_crdt_file"), "not_a_dir")
      File.write!(file, "hello")
      assert {:error, reason} = ContextStore.start_link(storage_opts: [data_dir: file])
      assert_names_path(reason, file)
      assert File.read!(file) == "hello"

      below = Path.join(file, "sub")
      assert {:error, reason} = ContextStore.start_link(storage_opts: [data_dir: below])
      assert_names_path(reason, file)
    end

    test "a RocksDB directory whose files are garbled is refused, naming the path" do
      root = tmp_dir!("vsmcp_crdt_garbled")
      good = Path.join(root, "good")
      store = start_store!(storage_opts: [data_dir: good])
      :ok = ContextStore.create(store, :x, :g_counter)
      {:ok, 3} = ContextStore.increment(store, :x, 3)
      :ok = ContextStore.sync(store)
      stop_and_wait(store)

      # A copy (never opened by this VM) with every file garbled.
      bad = Path.join(root, "bad")
      File.cp_r!(good, bad)

      for f <- File.ls!(bad), f not in ["LOCK"], File.regular?(Path.join(bad, f)) do
        garble!(Path.join(bad, f))
      end

      assert {:error, reason} = ContextStore.start_link(storage_opts: [data_dir: bad])
      assert_names_path(reason, bad)

      # Under a supervisor: the start fails with the reason, no crash loop.
      assert {:error, {^reason, _child}} =
               start_supervised({ContextStore, storage_opts: [data_dir: bad]})

      # The original is fine.
      store = start_store!(storage_opts: [data_dir: good])
      assert {:ok, 3} = ContextStore.get(store, :x)
    end

    test "a marker naming a directory of junk is refused, naming the path" do
      dir = tmp_dir!("vsmcp_crdt_marker_junk")
      file = Path.join(dir, "store.dets")
      data = Path.join(dir, ".store.dets.handmade_123.rocksdb")
      File.write!(file, "vsmcp_crdt store marker v1\ndata: .store.dets.handmade_123.rocksdb\n")
      File.mkdir_p!(data)
      File.write!(Path.join(data, "junk"), :crypto.strong_rand_bytes(100))

      assert {:error, reason} = ContextStore.start_link(storage_opts: [dets_file: file])
      assert_names_path(reason, data)
    end
  end

  describe "a dets_file that is not our marker" do
    test "random bytes give {:error, {:foreign_data_file, path}}" do
      file = Path.join(tmp_dir!("vsmcp_crdt_foreign"), "test_crdt.dets")
      File.write!(file, :crypto.strong_rand_bytes(512))
      content = File.read!(file)

      assert {:error, {:foreign_data_file, path}} =
               ContextStore.start_link(storage_opts: [dets_file: file])

      assert path == Path.expand(file)
      # Untouched.
      assert File.read!(file) == content
    end

    # A DETS file of the replaced application is imported (see
    # storage/dets_import_test.exs); one holding something else is refused,
    # and left as it was.
    test "a DETS file of other entries gives {:error, {:dets_import_failed, path, _}}" do
      file = Path.join(tmp_dir!("vsmcp_crdt_dets"), "legacy.dets")
      {:ok, t} = :dets.open_file(make_ref(), file: String.to_charlist(file))
      :ok = :dets.insert(t, {:key, :value})
      :ok = :dets.close(t)
      content = File.read!(file)

      assert {:error, {:dets_import_failed, path, {:bad_entry, :key, :not_a_crdt_entry}}} =
               ContextStore.start_link(storage_opts: [dets_file: file])

      assert path == Path.expand(file)
      assert File.read!(file) == content
      assert File.ls!(Path.dirname(file)) == ["legacy.dets"]
    end

    test "a marker naming a path outside its directory is foreign" do
      dir = tmp_dir!("vsmcp_crdt_evil_marker")
      file = Path.join(dir, "test_crdt.dets")

      for target <- ["../../etc", "/etc", ".test_crdt.dets.x/../../y.rocksdb", "..", ""] do
        File.write!(file, "vsmcp_crdt store marker v1\ndata: #{target}\n")

        assert {:error, {:foreign_data_file, _}} =
                 ContextStore.start_link(storage_opts: [dets_file: file]),
               target
      end
    end

    test "a dets_file that is a directory is refused, naming the path" do
      dir = Path.join(tmp_dir!("vsmcp_crdt_dets_dir"), "test_crdt.dets")
      File.mkdir_p!(dir)
      assert {:error, reason} = ContextStore.start_link(storage_opts: [dets_file: dir])
      assert_names_path(reason, dir)
    end
  end

  describe "invalid options" do
    setup do
      %{dir: tmp_dir!("vsmcp_crdt_opts")}
    end

    test "give {:error, {:invalid_option, ...}}", %{dir: dir} do
      cases = [
        {[storage_opts: :nope], :storage_opts},
        {[storage_opts: [1, 2]], :storage_opts},
        {[storage_opts: %{data_dir: dir}], :storage_opts},
        {[storage_opts: [data_dir: dir, memory_limit: -1]], :memory_limit},
        {[storage_opts: [data_dir: dir, memory_limit: :lots]], :memory_limit},
        {[storage_opts: [data_dir: dir, ets_limit: "10"]], :ets_limit},
        {[storage_opts: [data_dir: dir, access_threshold: 1.5]], :access_threshold},
        {[storage_opts: [data_dir: dir, flush_interval: :fast]], :flush_interval},
        {[storage_opts: [data_dir: dir, max_value_bytes: nil]], :max_value_bytes},
        {[storage_opts: [data_dir: dir, cache_bytes: -5]], :cache_bytes},
        {[storage_opts: [data_dir: dir, durability: :bogus]], :durability},
        {[storage_opts: [data_dir: dir], durability: :sometimes], :durability},
        {[storage_opts: [data_dir: 123]], :data_dir},
        {[storage_opts: [data_dir: :atom]], :data_dir},
        {[storage_opts: [dets_file: 123]], :dets_file},
        {[storage_opts: [dets_file: %{}]], :dets_file}
      ]

      for {opts, key} <- cases do
        assert {:error, {:invalid_option, ^key, _}} = ContextStore.start_link(opts),
               "#{inspect(opts)}"
      end

      # Nothing was started or left registered.
      assert File.ls!(dir) == []
    end

    test "an invalid :name or :decay_interval, or options that are not a keyword list",
         %{dir: dir} do
      assert {:error, {:invalid_option, :name, "a string"}} =
               ContextStore.start_link(name: "a string", storage_opts: [data_dir: dir])

      assert {:error, {:invalid_option, :decay_interval, -1}} =
               ContextStore.start_link(storage_opts: [data_dir: dir, decay_interval: -1])

      assert {:error, {:invalid_option, :decay_interval, "soon"}} =
               ContextStore.start_link(storage_opts: [data_dir: dir, decay_interval: "soon"])

      assert {:error, {:invalid_option, _, _}} = ContextStore.start_link(:not_a_list)
      assert {:error, {:invalid_option, _, _}} = ContextStore.start_link([:not_a_pair])
    end

    test "a name already taken gives {:error, {:already_started, pid}}", %{dir: dir} do
      name = :"vsmcp_taken_#{System.unique_integer([:positive])}"
      pid = start_store!(name: name, storage_opts: [data_dir: Path.join(dir, "a")])

      assert {:error, {:already_started, ^pid}} =
               ContextStore.start_link(name: name, storage_opts: [data_dir: Path.join(dir, "b")])

      assert :ok = ContextStore.create(name, :x, :g_counter)
    end
  end

  describe "a failing disk" do
    for durability <- [:relaxed, :strict] do
      test "mutations answer {:error, {:storage_error, _}}, reads keep working (#{durability})" do
        dir = tmp_dir!("vsmcp_crdt_full_disk")
        opts = [durability: unquote(durability), storage_opts: [data_dir: dir]]
        store = start_store!(opts)
        :ok = ContextStore.create(store, :c, :pn_counter)
        :ok = ContextStore.create(store, :s, :or_set)
        :ok = ContextStore.create(store, :r, :lww_register)
        {:ok, 5} = ContextStore.increment(store, :c, 5)
        {:ok, _} = ContextStore.add(store, :s, "a")
        {:ok, "v"} = ContextStore.set(store, :r, "v")
        :ok = ContextStore.sync(store)

        assert :ok = ContextStore.inject_write_failure(store, true)

        for result <- [
              ContextStore.increment(store, :c, 1),
              ContextStore.decrement(store, :c, 1),
              ContextStore.add(store, :s, "b"),
              ContextStore.remove(store, :s, "a"),
              ContextStore.set(store, :r, "w"),
              ContextStore.create(store, :new, :g_counter),
              ContextStore.delete(store, :c),
              ContextStore.update(store, :c, {:increment, 1}, return: :ok)
            ] do
          assert {:error, {:storage_error, message}} = result
          assert is_binary(message)
        end

        assert Process.alive?(store)
        assert {:ok, 5} = ContextStore.get(store, :c)
        assert {:ok, set} = ContextStore.get(store, :s)
        assert MapSet.to_list(set) == ["a"]
        assert {:ok, true} = ContextStore.member?(store, :s, "a")
        assert {:ok, "v"} = ContextStore.get(store, :r)
        assert {:ok, %{type: :pn_counter}} = ContextStore.get_metadata(store, :c)
        assert {:error, :not_found} = ContextStore.get(store, :new)
        assert Enum.sort(ContextStore.list_crdts(store)) == [:c, :r, :s]
        assert is_map(ContextStore.stats(store))

        assert :ok = ContextStore.inject_write_failure(store, false)
        assert {:ok, 6} = ContextStore.increment(store, :c, 1)
        assert {:ok, set} = ContextStore.add(store, :s, "b")
        assert set == MapSet.new(["a", "b"])
        assert :ok = ContextStore.create(store, :new, :g_counter)
        assert :ok = ContextStore.sync(store)

        stop_and_wait(store)
        store = start_store!(opts)
        assert {:ok, 6} = ContextStore.get(store, :c)
        assert {:ok, ^set} = ContextStore.get(store, :s)
        assert {:ok, "v"} = ContextStore.get(store, :r)
        assert {:ok, 0} = ContextStore.get(store, :new)
      end
    end

    test "writes pending when the disk fails are kept and written once it recovers" do
      dir = tmp_dir!("vsmcp_crdt_pending_fail")
      # No group commit of its own: only sync/1 writes.
      opts = [storage_opts: [data_dir: dir, flush_interval: 3_600_000]]
      store = start_store!(opts)
      :ok = ContextStore.create(store, :c, :g_counter)
      :ok = ContextStore.sync(store)

      # Acknowledged (relaxed), then the disk fails before the group commit.
      {:ok, 2} = ContextStore.increment(store, :c, 2)
      :ok = ContextStore.inject_write_failure(store, true)
      assert {:error, {:storage_error, _}} = ContextStore.sync(store)
      stats = ContextStore.stats(store)
      assert stats.pending_writes > 0
      assert is_binary(stats.write_error)
      assert {:error, {:storage_error, _}} = ContextStore.increment(store, :c, 1)
      assert {:ok, 2} = ContextStore.get(store, :c)

      assert :ok = ContextStore.inject_write_failure(store, false)
      assert :ok = ContextStore.sync(store)
      stats = ContextStore.stats(store)
      assert stats.pending_writes == 0
      assert stats.write_error == nil
      assert {:ok, 3} = ContextStore.increment(store, :c, 1)
      stop_and_wait(store)

      assert {:ok, 3} = ContextStore.get(start_store!(opts), :c)
    end
  end

  describe "huge values" do
    setup do
      dir = tmp_dir!("vsmcp_crdt_huge")
      %{store: start_store!(storage_opts: [data_dir: dir, max_value_bytes: 1000])}
    end

    test "ids, elements and values over max_value_bytes are refused", %{store: store} do
      big = :binary.copy("x", 2000)
      :ok = ContextStore.create(store, :s, :or_set)
      :ok = ContextStore.create(store, :r, :lww_register)

      assert {:error, {:value_too_large, size, 1000}} = ContextStore.add(store, :s, big)
      assert size > 1000
      assert {:error, {:value_too_large, _, 1000}} = ContextStore.remove(store, :s, big)
      assert {:error, {:value_too_large, _, 1000}} = ContextStore.set(store, :r, big)
      assert {:error, {:value_too_large, _, 1000}} = ContextStore.set(store, :r, %{k: big})
      assert {:error, {:value_too_large, _, 1000}} = ContextStore.create(store, big, :g_counter)

      assert {:error, {:value_too_large, _, 1000}} =
               ContextStore.create(store, {:id, big}, :or_set)

      # Nothing changed; below the limit all is well.
      assert {:ok, nil} = ContextStore.get(store, :r)
      assert {:ok, set} = ContextStore.get(store, :s)
      assert MapSet.size(set) == 0
      assert Enum.sort(ContextStore.list_crdts(store)) == [:r, :s]
      ok = :binary.copy("y", 900)
      assert {:ok, ^ok} = ContextStore.set(store, :r, ok)
      assert {:ok, _} = ContextStore.add(store, :s, ok)
      assert :ok = ContextStore.create(store, ok, :g_counter)
    end

    test "without max_value_bytes, 4 MiB values are accepted and 17 MiB ones refused" do
      store = start_store!(storage_opts: [data_dir: tmp_dir!("vsmcp_crdt_default_max")])
      :ok = ContextStore.create(store, :r, :lww_register)
      four = :crypto.strong_rand_bytes(4 <<< 20)
      assert {:ok, ^four} = ContextStore.set(store, :r, four)
      assert {:ok, ^four} = ContextStore.get(store, :r)

      seventeen = :binary.copy(<<0>>, 17 <<< 20)

      assert {:error, {:value_too_large, _, 16_777_216}} = ContextStore.set(store, :r, seventeen)

      assert {:ok, ^four} = ContextStore.get(store, :r)
    end
  end

  describe "random and deep terms" do
    setup do
      dir = tmp_dir!("vsmcp_crdt_random")
      store = start_store!(storage_opts: [data_dir: dir, memory_limit: 8, ets_limit: 8])
      %{store: store}
    end

    test "random ids, types, operations and elements never crash the store", %{store: store} do
      types = [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]
      known = for t <- types, do: {:known, t}
      for {:known, t} = id <- known, do: :ok = ContextStore.create(store, id, t)
      # Operations as the API spells them, around random arguments, so that
      # updates reach the CRDTs as well as the argument checks.
      arg =
        one_of([
          HostileTerms.term(),
          tuple(
            {member_of([:increment, :decrement, :add, :remove, :set, :foo]), HostileTerms.term()}
          )
        ])

      check all(
              id <- one_of([member_of(known), HostileTerms.term()]),
              arg <- arg,
              call <- integer(1..11),
              type <- one_of([member_of(types), constant(:arg)]),
              amount <- member_of([1, -1, 0, 2 ** 70, :arg]),
              decay? <- frequency([{49, constant(false)}, {1, constant(true)}]),
              max_runs: 400
            ) do
        pick = fn x -> if x == :arg, do: arg, else: x end

        {call, result} =
          case call do
            1 -> {:create, ContextStore.create(store, id, pick.(type))}
            2 -> {:get, ContextStore.get(store, id)}
            3 -> {:update, ContextStore.update(store, id, arg)}
            4 -> {:add, ContextStore.add(store, id, arg)}
            5 -> {:remove, ContextStore.remove(store, id, arg)}
            6 -> {:set, ContextStore.set(store, id, arg)}
            7 -> {:member?, ContextStore.member?(store, id, arg)}
            8 -> {:increment, ContextStore.increment(store, id, pick.(amount))}
            9 -> {:decrement, ContextStore.decrement(store, id, pick.(amount))}
            10 -> {:get_metadata, ContextStore.get_metadata(store, id)}
            11 -> {:update_ok, ContextStore.update(store, id, arg, return: :ok)}
          end

        assert match?(:ok, result) or match?({:ok, _}, result) or match?({:error, _}, result),
               "#{call} #{inspect(id)} #{inspect(arg)} -> #{inspect(result)}"

        if decay?, do: :ok = ContextStore.decay_now(store)
      end

      assert Process.alive?(store)
      assert is_list(ContextStore.list_crdts(store))
      :ok = ContextStore.create(store, :after, :g_counter)
      assert {:ok, 1} = ContextStore.increment(store, :after)
    end

    test "terms nested beyond 256 levels are refused, shallower ones round trip",
         %{store: store} do
      :ok = ContextStore.create(store, :s, :or_set)
      :ok = ContextStore.create(store, :r, :lww_register)
      :ok = ContextStore.create(store, :c, :g_counter)

      for depth <- [257, 513, 600, 100_000] do
        deep = nested(depth)
        assert {:error, _} = ContextStore.create(store, deep, :g_counter)
        assert {:error, _} = ContextStore.get(store, deep)
        assert {:error, _} = ContextStore.get_metadata(store, deep)
        assert {:error, _} = ContextStore.delete(store, deep)
        assert {:error, _} = ContextStore.increment(store, deep, 1)
        assert {:error, _} = ContextStore.add(store, :s, deep)
        assert {:error, _} = ContextStore.remove(store, :s, deep)
        assert {:error, _} = ContextStore.member?(store, :s, deep)
        assert {:error, _} = ContextStore.set(store, :r, deep)
        assert {:error, _} = ContextStore.set(store, :r, [deep])
        assert {:error, _} = ContextStore.update(store, :c, deep)
        assert {:error, _} = ContextStore.update(store, :c, {:increment, deep})
      end

      assert {:ok, set} = ContextStore.get(store, :s)
      assert MapSet.size(set) == 0
      assert {:ok, nil} = ContextStore.get(store, :r)

      fine = nested(100)
      assert :ok = ContextStore.create(store, fine, :g_counter)
      assert {:ok, 1} = ContextStore.increment(store, fine, 1)
      assert {:ok, ^fine} = ContextStore.set(store, :r, fine)
      assert {:ok, ^fine} = ContextStore.get(store, :r)
      assert {:ok, _} = ContextStore.add(store, :s, fine)
      assert {:ok, true} = ContextStore.member?(store, :s, fine)
      assert fine in ContextStore.list_crdts(store)
    end

    test "amounts that are not small integers are refused", %{store: store} do
      :ok = ContextStore.create(store, :c, :g_counter)
      :ok = ContextStore.create(store, :pn, :pn_counter)

      for amount <- [1.5, "1", :one, nil, [1], 2 ** 64, 2 ** 200, -(2 ** 200)] do
        assert {:error, _} = ContextStore.increment(store, :pn, amount), inspect(amount)
        assert {:error, _} = ContextStore.decrement(store, :pn, amount), inspect(amount)
      end

      for amount <- [1.5, "1", :one, nil, 2 ** 64, 2 ** 200] do
        assert {:error, _} = ContextStore.increment(store, :c, amount), inspect(amount)
      end

      assert {:ok, 0} = ContextStore.get(store, :c)
      assert {:ok, 0} = ContextStore.get(store, :pn)
    end
  end

  describe "a stopped store" do
    test "every call answers {:error, _}" do
      dir = tmp_dir!("vsmcp_crdt_stopped")
      name = :"vsmcp_stopped_#{System.unique_integer([:positive])}"
      store = start_store!(name: name, storage_opts: [data_dir: dir])
      :ok = ContextStore.create(store, :c, :g_counter)
      :ok = ContextStore.create(store, :s, :or_set)
      stop_and_wait(store)

      for s <- [store, name] do
        assert {:error, _} = ContextStore.create(s, :x, :g_counter)
        assert {:error, _} = ContextStore.get(s, :c)
        assert {:error, _} = ContextStore.update(s, :c, {:increment, 1})
        assert {:error, _} = ContextStore.update(s, :c, {:increment, 1}, return: :ok)
        assert {:error, _} = ContextStore.increment(s, :c)
        assert {:error, _} = ContextStore.increment(s, :c, 2)
        assert {:error, _} = ContextStore.decrement(s, :c)
        assert {:error, _} = ContextStore.decrement(s, :c, 2)
        assert {:error, _} = ContextStore.add(s, :s, 1)
        assert {:error, _} = ContextStore.remove(s, :s, 1)
        assert {:error, _} = ContextStore.set(s, :r, 1)
        assert {:error, _} = ContextStore.member?(s, :s, 1)
        assert {:error, _} = ContextStore.list_crdts(s)
        assert {:error, _} = ContextStore.get_metadata(s, :c)
        assert {:error, _} = ContextStore.delete(s, :c)
        assert {:error, _} = ContextStore.sync(s)
        assert {:error, _} = ContextStore.stats(s)
        assert {:error, _} = ContextStore.decay_now(s)
        assert {:error, _} = ContextStore.inject_write_failure(s, true)
      end

      for s <- [:no_such_store, spawn(fn -> :ok end), "not a store", {:global, :nope}] do
        assert {:error, _} = ContextStore.get(s, :c)
        assert {:error, _} = ContextStore.create(s, :c, :g_counter)
        assert {:error, _} = ContextStore.list_crdts(s)
      end
    end
  end
end
