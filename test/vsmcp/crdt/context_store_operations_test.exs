defmodule Vsmcp.CRDT.ContextStoreOperationsTest do
  @moduledoc """
  Operations on a running store (issue 9): `backup/2` and restoring it,
  `stream_crdts/2` over a large store, and `info/1`.
  """
  # Not async: streaming 100,000 ids twice keeps both cores busy for
  # seconds, which made timing-sensitive sync tests running beside it lag
  # (`faults_test.exs` checks a peer's sum right after the writes).
  use ExUnit.Case, async: false

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.Native

  # Creates one id of every type with a known value, and a deleted id;
  # returns the values.
  defp populate(store) do
    :ok = ContextStore.create(store, :gc, :g_counter)
    :ok = ContextStore.create(store, :pn, :pn_counter)
    :ok = ContextStore.create(store, {:or, "set"}, :or_set)
    :ok = ContextStore.create(store, "aw", :aw_set)
    :ok = ContextStore.create(store, [:reg], :lww_register)
    :ok = ContextStore.create(store, :deleted, :g_counter)
    {:ok, 10} = ContextStore.increment(store, :gc, 10)
    {:ok, -3} = ContextStore.decrement(store, :pn, 3)
    {:ok, _} = ContextStore.add(store, {:or, "set"}, %{a: 1})
    {:ok, _} = ContextStore.add(store, {:or, "set"}, "gone")
    {:ok, _} = ContextStore.remove(store, {:or, "set"}, "gone")
    {:ok, _} = ContextStore.add(store, "aw", 1.5)
    {:ok, _} = ContextStore.set(store, [:reg], {:v, [1, 2]})
    :ok = ContextStore.delete(store, :deleted)

    %{
      :gc => 10,
      :pn => -3,
      {:or, "set"} => MapSet.new([%{a: 1}]),
      "aw" => MapSet.new([1.5]),
      [:reg] => {:v, [1, 2]}
    }
  end

  defp restore!(dir, opts \\ []) do
    start_store!(Keyword.merge([node_id: :restored, storage_opts: [data_dir: dir]], opts))
  end

  describe "backup/2" do
    test "a backup taken while writing restores in a new store with equal values" do
      root = tmp_dir!()
      # A long flush interval: the writes are still pending at the backup.
      store =
        start_store!(
          node_id: :a,
          storage_opts: [data_dir: Path.join(root, "db"), flush_interval: 60_000]
        )

      expected = populate(store)
      :ok = ContextStore.create(store, :busy, :g_counter)
      :ok = ContextStore.create(store, :busy_set, :or_set)
      {:ok, meta_before} = ContextStore.get_metadata(store, :gc)

      writer =
        Task.async(fn ->
          Stream.iterate(1, &(&1 + 1))
          |> Enum.reduce_while(0, fn i, acked ->
            {:ok, _} = ContextStore.increment(store, :busy)
            :ok = ContextStore.update(store, :busy_set, {:add, i}, return: :ok)

            receive do
              :stop -> {:halt, acked + 1}
            after
              0 -> {:cont, acked + 1}
            end
          end)
        end)

      eventually(fn -> match?({:ok, n} when n > 500, ContextStore.get(store, :busy)) end)
      {:ok, floor} = ContextStore.get(store, :busy)
      backup = Path.join(root, "backup")
      assert :ok = ContextStore.backup(store, backup)
      send(writer.pid, :stop)
      total = Task.await(writer, 30_000)

      restored = restore!(backup)

      for {id, value} <- expected do
        assert ContextStore.get(restored, id) == {:ok, value}
      end

      {:ok, meta} = ContextStore.get_metadata(restored, :gc)
      assert Map.delete(meta, :tier) == Map.delete(meta_before, :tier)
      assert ContextStore.get(restored, :deleted) == {:error, :not_found}
      {:ok, busy} = ContextStore.get(restored, :busy)
      assert busy >= floor and busy <= total
      {:ok, set} = ContextStore.get(restored, :busy_set)
      assert MapSet.size(set) >= floor - 1

      assert Enum.sort(ContextStore.list_crdts(restored)) ==
               Enum.sort(ContextStore.list_crdts(store))

      # Everything the copy lists reads back.
      for id <- ContextStore.list_crdts(restored),
          do: assert({:ok, _} = ContextStore.get(restored, id))
    end

    test "after a restart, sync_info's digest_ready turns true once every id is in the digest" do
      root = tmp_dir!()

      opts = [
        storage_opts: [data_dir: Path.join(root, "db")],
        sync_opts: [topic: "ready-#{System.unique_integer([:positive])}", transport: :pg]
      ]

      store = start_store!(opts)
      for i <- 1..3_000, do: :ok = ContextStore.create(store, {:c, i}, :g_counter)
      eventually(fn -> ContextStore.sync_info(store).digest_ready end)
      stop_and_wait(store)

      store = start_store!(opts)
      assert is_boolean(ContextStore.sync_info(store).digest_ready)
      eventually(fn -> ContextStore.sync_info(store).digest_ready end)
      assert {:ok, 0} = ContextStore.get(store, {:c, 3_000})
    end

    test "the restored copy is a new replica: both run and sync as two" do
      root = tmp_dir!()
      topic = "backup-#{System.unique_integer([:positive])}"
      sync_opts = [topic: topic, transport: :pg]

      store =
        start_store!(
          node_id: :a,
          storage_opts: [data_dir: Path.join(root, "db")],
          sync_opts: sync_opts
        )

      :ok = ContextStore.create(store, :gc, :g_counter)
      {:ok, 10} = ContextStore.increment(store, :gc, 10)
      backup = Path.join(root, "backup")
      :ok = ContextStore.backup(store, backup)

      restored = restore!(backup, sync_opts: sync_opts)
      assert ContextStore.sync_info(restored).replica != ContextStore.sync_info(store).replica

      {:ok, 11} = ContextStore.increment(store, :gc, 1)
      {:ok, 12} = ContextStore.increment(restored, :gc, 2)

      # Two replicas: each one's increments count once.
      eventually(fn ->
        ContextStore.get(store, :gc) == {:ok, 13} and ContextStore.get(restored, :gc) == {:ok, 13}
      end)

      # info/1 shows the peer's clock and the merges from it.
      info = ContextStore.info(restored)
      assert is_integer(info.clock.max_remote_ahead_ms)
      assert info.clock.max_remote_ahead_ms <= info.clock.max_clock_offset_ms
      assert info.ops.remote_merges >= 1
      assert [%{up: true}] = info.sync.peers
    end

    test "an existing or unwritable destination is refused" do
      root = tmp_dir!()
      store = start_store!(storage_opts: [data_dir: Path.join(root, "db")])
      :ok = ContextStore.create(store, :x, :g_counter)

      exists = Path.join(root, "exists")
      File.mkdir_p!(exists)
      assert ContextStore.backup(store, exists) == {:error, :already_exists}
      assert File.ls!(exists) == []
      assert ContextStore.backup(store, Path.join(root, "db")) == {:error, :already_exists}

      # Its parent is a file: unwritable, even for root.
      file = Path.join(root, "file")
      File.write!(file, "x")
      assert {:error, {:storage_error, msg}} = ContextStore.backup(store, Path.join(file, "b"))
      assert is_binary(msg)

      assert ContextStore.backup(spawn(fn -> :ok end), Path.join(root, "b")) == {:error, :noproc}
    end
  end

  describe "stream_crdts/2" do
    @n 100_000

    setup do
      store =
        start_store!(storage_opts: [data_dir: tmp_dir!(), memory_limit: 1_000, ets_limit: 1_000])

      ids =
        for i <- 1..@n do
          # Ids of several shapes: their canonical byte order is not
          # Erlang's term order.
          id =
            case rem(i, 3) do
              0 -> {:user, i}
              1 -> "doc-#{i}"
              2 -> i
            end

          :ok = ContextStore.create(store, id, :g_counter)
          id
        end

      %{store: store, ids: ids}
    end

    test "yields every id exactly once, in a stable order, a page per call", %{
      store: store,
      ids: ids
    } do
      listed = Enum.to_list(ContextStore.stream_crdts(store))
      assert length(listed) == @n
      assert MapSet.new(listed) == MapSet.new(ids)
      assert listed == ContextStore.list_crdts(store)
      assert Enum.to_list(ContextStore.stream_crdts(store, page_size: 777)) == listed

      # Lazy: nothing is read before the stream is enumerated.
      stream = ContextStore.stream_crdts(store, page_size: 100)
      :ok = ContextStore.create(store, :late, :g_counter)
      assert :late in Enum.to_list(stream)
      assert length(Enum.take(stream, 150)) == 150

      # Paged: a process enumerating everything holds about a page, not
      # the whole list.
      all_words = :erts_debug.flat_size(listed)
      paged = max_heap_while_enumerating(ContextStore.stream_crdts(store))
      small_pages = max_heap_while_enumerating(ContextStore.stream_crdts(store, page_size: 100))
      assert paged < div(all_words, 5)
      assert small_pages < div(paged, 2)
    end

    test "writes during streaming never repeat an id nor hide a stable one", %{
      store: store,
      ids: ids
    } do
      writer =
        Task.async(fn ->
          Stream.iterate(0, &(&1 + 1))
          |> Enum.reduce_while(:ok, fn i, :ok ->
            :ok = ContextStore.create(store, {:new, i}, :g_counter)
            :ok = ContextStore.create(store, "new-#{i}", :pn_counter)
            if rem(i, 2) == 0, do: :ok = ContextStore.delete(store, {:new, i})

            receive do
              :stop -> {:halt, :ok}
            after
              0 -> {:cont, :ok}
            end
          end)
        end)

      listed = Enum.to_list(ContextStore.stream_crdts(store, page_size: 500))
      send(writer.pid, :stop)
      Task.await(writer, 30_000)

      assert length(listed) == length(Enum.uniq(listed))
      assert MapSet.subset?(MapSet.new(ids), MapSet.new(listed))
    end
  end

  test "stream_crdts checks its options and exits when the store is gone" do
    assert_raise ArgumentError, fn -> ContextStore.stream_crdts(self(), page_size: 0) end
    stream = ContextStore.stream_crdts(spawn(fn -> :ok end))
    assert {:noproc, {ContextStore, :stream_crdts, [_, []]}} = catch_exit(Enum.to_list(stream))
  end

  test "info/1 reports every section with plausible values" do
    dir = tmp_dir!()

    store =
      start_store!(node_id: :i, storage_opts: [data_dir: dir, memory_limit: 100, ets_limit: 100])

    populate(store)

    for i <- 1..300 do
      :ok = ContextStore.create(store, {:c, i}, :pn_counter)
      {:ok, _} = ContextStore.increment(store, {:c, i}, i)
    end

    for _ <- 1..50, do: {:ok, _} = ContextStore.get(store, :gc)

    info = ContextStore.info(store)
    stats = ContextStore.stats(store)

    # Extends stats/1.
    for key <- Map.keys(stats) -- [:pending_writes, :cold_estimate, :hlc, :hot, :warm] do
      assert Map.fetch!(info, key) == Map.fetch!(stats, key), "#{key}"
    end

    assert info.uptime_ms >= 0

    types = [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]
    %{crdts: crdts} = info
    assert crdts.count == 305
    # A store that never synced keeps no delete tombstones.
    assert crdts.tombstones == 0

    assert crdts.by_type == %{
             g_counter: 1,
             pn_counter: 301,
             or_set: 1,
             aw_set: 1,
             lww_register: 1
           }

    for tier <- [:hot, :warm, :cold] do
      assert Map.keys(crdts[tier].by_type) |> Enum.sort() == Enum.sort(types)
      assert crdts[tier].count == Enum.sum(Map.values(crdts[tier].by_type))
    end

    assert crdts.cold.exact
    assert is_integer(crdts.cold.sampled) and crdts.cold.sampled >= 0
    assert crdts.hot.count + crdts.warm.count + crdts.cold.count == 305

    %{memory: memory, disk: disk, compaction: compaction} = info
    assert memory.hot_bytes > 0
    assert memory.warm_bytes >= 0 and memory.pending_bytes >= 0

    for key <- [
          :memtable_bytes,
          :block_cache_bytes,
          :table_readers_bytes,
          :nif_heap_live_bytes,
          :nif_heap_resident_bytes
        ],
        do: assert(is_integer(memory[key]) and memory[key] >= 0)

    for key <- [:sst_bytes, :live_sst_bytes, :live_data_bytes, :keys_estimate],
        do: assert(is_integer(disk[key]) and disk[key] >= 0)

    assert disk.wal_files >= 1 and disk.wal_bytes > 0
    assert is_boolean(compaction.pending) and is_boolean(compaction.flush_pending)
    assert is_boolean(compaction.write_stopped)
    assert compaction.running >= 0 and compaction.background_errors == 0

    %{ops: ops} = info
    assert ops.reads >= 50
    assert ops.writes >= 305 + 300 + 8
    assert ops.remote_merges == 0
    assert is_float(ops.reads_per_sec) and ops.reads_per_sec >= 0
    assert is_float(ops.writes_per_sec) and is_integer(ops.window_ms)

    %{lag: lag} = info
    assert lag.flush_interval_ms == 5
    assert lag.pending_writes >= 0
    assert lag.oldest_pending_ms == nil or lag.oldest_pending_ms >= 0

    %{clock: clock} = info
    assert {wall, counter} = clock.hlc
    assert wall > 0 and counter >= 0
    assert clock.max_remote_ahead_ms == nil
    assert clock.max_clock_offset_ms == 500

    assert %{enabled: false} = info.sync

    # Once flushed nothing is pending; the rates cover a window that a
    # later call closes.
    :ok = Native.store_flush(store)
    eventually(fn -> ContextStore.info(store).lag.oldest_pending_ms == nil end)
    later = eventually(fn -> (i = ContextStore.info(store)).ops.window_ms >= 1_000 && i end)
    assert later.ops.writes >= ops.writes
  end

  test "info/1 shows writes that wait for a flush" do
    store = start_store!(storage_opts: [data_dir: tmp_dir!(), flush_interval: 60_000])

    :ok = ContextStore.create(store, :x, :g_counter)
    {:ok, _} = ContextStore.increment(store, :x)
    %{lag: lag} = ContextStore.info(store)
    assert lag.pending_writes == 1 and lag.pending_bytes > 0
    assert is_integer(lag.oldest_pending_ms)

    assert ContextStore.info(spawn(fn -> :ok end)) == {:error, :noproc}
  end

  # The largest heap (in words) of a new process while it enumerates
  # `stream`, sampled after every element.
  defp max_heap_while_enumerating(stream) do
    task =
      Task.async(fn ->
        Enum.reduce(stream, 0, fn _, max ->
          {:total_heap_size, words} = Process.info(self(), :total_heap_size)
          max(max, words)
        end)
      end)

    Task.await(task, 60_000)
  end
end
