defmodule Vsmcp.CRDT.ContextStoreDurabilityTest do
  @moduledoc """
  What survives a restart of `Vsmcp.CRDT.ContextStore`: values, metadata
  and the HLC high-water mark, across a clean stop, a killed store process
  (relaxed mode, after a flush) and a SIGKILLed OS process (strict mode);
  restarts that load nothing eagerly; the legacy `dets_file` start/stop
  cycle; and writes whose size is proportional to the delta.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore

  # Creates one id of every type with a known value; returns the values.
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

  defp assert_values(store, expected) do
    for {id, value} <- expected do
      assert {:ok, ^value} = ContextStore.get(store, id), "#{inspect(id)}"
    end

    assert {:error, :not_found} = ContextStore.get(store, :deleted)
    assert Enum.sort(ContextStore.list_crdts(store)) == Enum.sort(Map.keys(expected))
  end

  defp metadata(store, ids) do
    Map.new(ids, fn id ->
      {:ok, meta} = ContextStore.get_metadata(store, id)
      {id, Map.take(meta, [:type, :created_by, :created_at, :updated_at])}
    end)
  end

  describe "restart recovery" do
    for {label, location} <- [data_dir: :data_dir, dets_file: :dets_file] do
      test "values and metadata survive stop/start (#{label})" do
        dir = tmp_dir!("vsmcp_crdt_restart")

        storage =
          case unquote(location) do
            :data_dir -> [data_dir: Path.join(dir, "db")]
            :dets_file -> [ets_name: :t, dets_name: :t, dets_file: Path.join(dir, "store.dets")]
          end

        opts = [node_id: {:node, "restart"}, storage_opts: storage]
        store = start_store!(opts)
        expected = populate(store)
        meta = metadata(store, Map.keys(expected))
        incarnation = ContextStore.stats(store).incarnation
        stop_and_wait(store)

        store = start_store!(opts)
        assert_values(store, expected)
        assert metadata(store, Map.keys(expected)) == meta

        for {_id, m} <- meta, do: assert(m.created_by == {:node, "restart"})
        assert ContextStore.stats(store).incarnation > incarnation

        # Still writable after the restart.
        assert {:ok, 11} = ContextStore.increment(store, :gc)
        stop_and_wait(store)

        # A different node id does not rewrite history.
        store = start_store!(Keyword.put(opts, :node_id, :other))
        assert {:ok, 11} = ContextStore.get(store, :gc)
        assert {:ok, %{created_by: {:node, "restart"}}} = ContextStore.get_metadata(store, :gc)
      end
    end

    test "a restart with 5_000 stored ids loads none of them, and all are readable" do
      dir = tmp_dir!("vsmcp_crdt_lazy")
      opts = [storage_opts: [data_dir: dir]]
      store = start_store!(opts)
      n = 5_000

      for i <- 1..n do
        :ok = ContextStore.create(store, i, :g_counter)
        :ok = ContextStore.update(store, i, {:increment, i}, return: :ok)
      end

      stop_and_wait(store)

      store = start_store!(opts)
      stats = ContextStore.stats(store)
      assert stats.hot + stats.warm == 0

      for i <- 1..n, do: assert({:ok, ^i} = ContextStore.get(store, i))
      assert length(ContextStore.list_crdts(store)) == n
    end

    test "the HLC never goes backwards across restarts" do
      dir = tmp_dir!("vsmcp_crdt_hlc")
      opts = [node_id: :hlc, storage_opts: [data_dir: dir]]
      store = start_store!(opts)
      :ok = ContextStore.create(store, :reg, :lww_register)

      # Many sets in a row: the clock's logical counter is used within a ms.
      for i <- 1..2_000, do: {:ok, ^i} = ContextStore.set(store, :reg, i)
      {:ok, "before"} = ContextStore.set(store, :reg, "before")
      hlc_before = ContextStore.stats(store).hlc
      assert {wall, counter} = hlc_before
      assert is_integer(wall) and is_integer(counter)

      for _round <- 1..3 do
        stop_and_wait(store)
        store = start_store!(opts)
        assert ContextStore.stats(store).hlc >= hlc_before
        assert {:ok, "before"} = ContextStore.get(store, :reg)
        stop_and_wait(store)
      end

      store = start_store!(opts)
      assert {:ok, "after"} = ContextStore.set(store, :reg, "after")
      assert ContextStore.stats(store).hlc > hlc_before
      stop_and_wait(store)

      store = start_store!(opts)
      assert {:ok, "after"} = ContextStore.get(store, :reg)
    end
  end

  describe "a killed store process" do
    test "relaxed: data flushed with sync/1 survives Process.exit(store, :kill)" do
      dir = tmp_dir!("vsmcp_crdt_kill_sync")
      opts = [storage_opts: [data_dir: dir]]
      store = start_unlinked_store!(opts)
      expected = populate(store)
      assert :ok = ContextStore.sync(store)
      kill_and_wait(store)

      store = start_store!(opts)
      assert_values(store, expected)
    end

    test "relaxed: data survives Process.exit(store, :kill) once no write is pending" do
      dir = tmp_dir!("vsmcp_crdt_kill_pending")
      opts = [storage_opts: [data_dir: dir, flush_interval: 2]]
      store = start_unlinked_store!(opts)
      expected = populate(store)
      eventually(fn -> ContextStore.stats(store).pending_writes == 0 end)
      kill_and_wait(store)

      store = start_store!(opts)
      assert_values(store, expected)
    end

    test "strict: every acknowledged write survives Process.exit(store, :kill)" do
      dir = tmp_dir!("vsmcp_crdt_kill_strict")
      opts = [durability: :strict, storage_opts: [data_dir: dir]]
      store = start_unlinked_store!(opts)
      assert ContextStore.stats(store).durability == :strict
      expected = populate(store)
      assert ContextStore.stats(store).pending_writes == 0
      kill_and_wait(store)

      store = start_store!(opts)
      assert_values(store, expected)
    end

    test "calls on a killed store answer an error" do
      dir = tmp_dir!("vsmcp_crdt_killed_calls")
      store = start_unlinked_store!(storage_opts: [data_dir: dir])
      :ok = ContextStore.create(store, :x, :g_counter)
      kill_and_wait(store)

      eventually(fn -> match?({:error, _}, ContextStore.get(store, :x)) end)
      assert {:error, _} = ContextStore.increment(store, :x)
      assert {:error, _} = ContextStore.create(store, :y, :g_counter)
    end
  end

  describe "strict durability and SIGKILL of the OS process" do
    @tag timeout: 120_000
    test "nothing acknowledged is lost when the whole BEAM is killed with SIGKILL" do
      dir = tmp_dir!("vsmcp_crdt_sigkill")

      script = """
      alias Vsmcp.CRDT.ContextStore
      {:ok, s} = ContextStore.start_link(node_id: :victim, durability: :strict, storage_opts: [data_dir: #{inspect(dir)}])
      :ok = ContextStore.create(s, :counter, :g_counter)
      :ok = ContextStore.create(s, :set, :aw_set)
      IO.puts("ready " <> System.pid())
      Enum.each(Stream.iterate(1, &(&1 + 1)), fn i ->
        {:ok, ^i} = ContextStore.increment(s, :counter)
        :ok = ContextStore.update(s, :set, {:add, i}, return: :ok)
        IO.puts("ack " <> Integer.to_string(i))
      end)
      """

      {elixir, args} = elixir_command(script)

      port =
        Port.open({:spawn_executable, elixir}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          {:line, 4096},
          args: args
        ])

      os_pid = await_ready(port, [])
      # Let it run, then kill it in the middle of its writes.
      acked = await_acks(port, 0, 300)
      {_, 0} = System.cmd("kill", ["-9", os_pid])
      {acked, status} = drain(port, acked)
      assert status == 128 + 9, "the subprocess was not killed by SIGKILL (status #{status})"
      assert acked >= 300

      store = start_store!(storage_opts: [data_dir: dir])
      assert {:ok, count} = ContextStore.get(store, :counter)
      assert count >= acked, "acknowledged #{acked} increments, found #{count}"
      assert {:ok, set} = ContextStore.get(store, :set)
      missing = for i <- 1..acked, not MapSet.member?(set, i), do: i
      assert missing == [], "acknowledged adds lost: #{inspect(Enum.take(missing, 10))}"
      # More may be there: an ack printed just before the kill can be lost
      # on its way out. What is there is a prefix of the operations, in order
      # (increment i, then add i).
      k = MapSet.size(set)
      assert set == MapSet.new(1..k)
      assert count in [k, k + 1]
      assert {:ok, %{created_by: :victim}} = ContextStore.get_metadata(store, :counter)
    end
  end

  defp await_ready(port, output) do
    receive do
      {^port, {:data, {:eol, "ready " <> os_pid}}} ->
        os_pid

      {^port, {:data, {_, line}}} ->
        await_ready(port, [line | output])

      {^port, {:exit_status, status}} ->
        flunk("subprocess exited (#{status}) before it was ready:\n" <> lines(output))
    after
      60_000 -> flunk("subprocess not ready:\n" <> lines(output))
    end
  end

  defp await_acks(_port, acked, wanted) when acked >= wanted, do: acked

  defp await_acks(port, acked, wanted) do
    receive do
      {^port, {:data, {:eol, "ack " <> n}}} ->
        await_acks(port, max(acked, String.to_integer(n)), wanted)

      {^port, {:data, _other_output}} ->
        await_acks(port, acked, wanted)

      {^port, {:exit_status, status}} ->
        flunk("subprocess exited (#{status}) after #{acked} acks")
    after
      60_000 -> flunk("subprocess stalled after #{acked} acks")
    end
  end

  # Acks written before the kill, then the exit status.
  defp drain(port, acked) do
    receive do
      {^port, {:data, {:eol, "ack " <> n}}} -> drain(port, max(acked, String.to_integer(n)))
      {^port, {:data, _}} -> drain(port, acked)
      {^port, {:exit_status, status}} -> {acked, status}
    after
      30_000 -> flunk("no exit status from the killed subprocess")
    end
  end

  defp lines(output), do: output |> Enum.reverse() |> Enum.join("\n")

  describe "legacy dets_file start/stop cycles" do
    # Each cycle starts a store linked to a process that exits right after
    # using it, so the previous store may still be shutting down when the
    # next one starts.
    defp cycle(opts, fun) do
      parent = self()

      {pid, ref} =
        spawn_monitor(fn ->
          result =
            case ContextStore.start_link(opts) do
              {:ok, store} -> {:started, fun.(store)}
              other -> {:not_started, other}
            end

          send(parent, {self(), result})
        end)

      receive do
        {^pid, result} ->
          receive do
            {:DOWN, ^ref, :process, ^pid, _} -> result
          end

        {:DOWN, ^ref, :process, ^pid, reason} ->
          flunk("cycle process crashed: #{inspect(reason)}")
      after
        30_000 -> flunk("cycle timed out")
      end
    end

    defp legacy_opts(file) do
      [
        node_id: :cycles,
        storage_opts: [ets_name: :test_crdt_ets, dets_name: :test_crdt_dets, dets_file: file]
      ]
    end

    # The file is removed after every fourth cycle: the next store begins
    # empty; in between, each store recovers its predecessor's data.
    @tag timeout: 300_000
    test "200 cycles on the same options, with and without File.rm in between" do
      dir = tmp_dir!("vsmcp_crdt_cycles")
      file = Path.join(dir, "test_crdt.dets")
      opts = legacy_opts(file)

      Enum.reduce(1..200, 0, fn n, count ->
        result =
          cycle(opts, fn store ->
            listed = ContextStore.list_crdts(store)
            before = ContextStore.get(store, :counter)
            created = ContextStore.create(store, :counter, :g_counter)
            {listed, before, created, ContextStore.increment(store, :counter)}
          end)

        expected =
          if count == 0,
            do: {[], {:error, :not_found}, :ok, {:ok, 1}},
            else: {[:counter], {:ok, count}, {:error, :already_exists}, {:ok, count + 1}}

        assert result == {:started, expected}, "cycle #{n}: #{inspect(result)}"

        if rem(n, 4) == 0 do
          assert :ok = File.rm(file)
          0
        else
          count + 1
        end
      end)

      # Stale data directories of removed markers do not pile up.
      store = start_store!(opts)
      assert ContextStore.list_crdts(store) == []

      assert length(Path.wildcard(Path.join(dir, ".test_crdt.dets.*.rocksdb"), match_dot: true)) <=
               2
    end

    test "a store started on an existing marker recovers; after File.rm it begins empty" do
      file = Path.join(tmp_dir!("vsmcp_crdt_marker"), "test_crdt.dets")
      opts = legacy_opts(file)
      store = start_store!(opts)
      :ok = ContextStore.create(store, :x, :or_set)
      {:ok, _} = ContextStore.add(store, :x, "kept")
      stop_and_wait(store)

      store = start_store!(opts)
      assert {:ok, set} = ContextStore.get(store, :x)
      assert MapSet.to_list(set) == ["kept"]
      stop_and_wait(store)

      :ok = File.rm(file)
      store = start_store!(opts)
      assert ContextStore.list_crdts(store) == []
      assert {:error, :not_found} = ContextStore.get(store, :x)
    end
  end

  describe "bytes written are proportional to the delta" do
    for durability <- [:relaxed, :strict] do
      @tag timeout: 120_000
      test "adding one element to a 20_000-element set grows the WAL by < 4 KiB (#{durability})" do
        dir = tmp_dir!("vsmcp_crdt_delta_bytes")
        store = start_store!(durability: unquote(durability), storage_opts: [data_dir: dir])
        :ok = ContextStore.create(store, :big, :or_set)

        for i <- 1..20_000 do
          :ok = ContextStore.update(store, :big, {:add, {:element, i}}, return: :ok)
        end

        :ok = ContextStore.sync(store)
        path = ContextStore.stats(store).path
        before = wal_bytes(path)
        assert before > 20_000, "expected the 20_000 adds in the WAL, found #{before} bytes"

        :ok = ContextStore.update(store, :big, {:add, {:element, 0}}, return: :ok)
        :ok = ContextStore.sync(store)
        grown = wal_bytes(path) - before
        assert grown > 0
        assert grown < 4096, "one add wrote #{grown} bytes to the WAL"

        assert {:ok, true} = ContextStore.member?(store, :big, {:element, 0})
        assert {:ok, set} = ContextStore.get(store, :big)
        assert MapSet.size(set) == 20_001
      end
    end
  end
end
