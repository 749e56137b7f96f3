defmodule HostApp.ExitWorkloadTest do
  # Leaves work running when the suite ends and the VM halts (`mix test`
  # halts right after printing its summary): every kind of store state the
  # native library must survive at exit. Nothing here is stopped or waited
  # for on purpose; every path is relative to the working directory.
  #
  # * stores linked to test processes (closing when their test ends),
  # * stores owned by processes that outlive the suite (open at halt), with
  #   writers keeping large writes pending,
  # * the supervised default store with recent writes,
  # * 20 unlinked processes in mid-write on the default store and on an
  #   anonymous store,
  # * stores taken over on the same path while still open, again and again,
  # * stores whose owner was killed (closing on a background thread, their
  #   handles unreferenced and awaiting garbage collection), again and again.
  use ExUnit.Case

  alias Vsmcp.CRDT.ContextStore

  @writers 20
  # Between two rounds of the open/take-over/kill churns: every round opens
  # and closes RocksDB handles (synced writes, memtable flushes), and on a
  # slow disk back-to-back rounds would hold the dirty IO schedulers that
  # every other store's open and close need.
  @churn_pause 10

  test "stores linked to the test process are still open when it exits" do
    for i <- 1..6 do
      opts = if rem(i, 2) == 0, do: [storage_opts: [dets_file: "linked_#{i}.dets"]], else: []
      {:ok, store} = ContextStore.start_link(opts)
      write_burst!(store, :linked, 500)
    end
  end

  test "stores owned by a process that outlives the suite are open at halt, with writes pending" do
    for i <- 1..4 do
      store = open_lasting!(storage_opts: [data_dir: "open/#{i}"])
      write_burst!(store, :lasting, 500)
      :ok = ContextStore.create(store, :big, :lww_register)
      :ok = ContextStore.create(store, :grow, :aw_set)

      forever(fn ->
        _ = ContextStore.set(store, :big, :binary.copy(<<System.unique_integer()::64>>, 512))
        _ = ContextStore.update(store, :grow, {:add, System.unique_integer()}, return: :ok)
      end)
    end
  end

  test "the supervised default store has recent writes at halt" do
    write_burst!(ContextStore, :default, 2000)
    :ok = ContextStore.create(:default_big, :lww_register)

    forever(fn ->
      _ = ContextStore.set(:default_big, :binary.copy(<<System.unique_integer()::64>>, 512))
    end)
  end

  test "#{@writers} unlinked writers are in mid-write on the default store and an anonymous one" do
    store = open_lasting!(storage_opts: [dets_file: "writers.dets"])
    :ok = ContextStore.create(ContextStore, :writer_hits, :g_counter)
    :ok = ContextStore.create(store, :writer_hits, :g_counter)

    writers =
      for _ <- 1..@writers do
        forever(fn ->
          for _ <- 1..5 do
            _ = ContextStore.update(ContextStore, :writer_hits, {:increment, 1})
            _ = ContextStore.update(store, :writer_hits, {:increment, 1})
          end
        end)
      end

    # Not waited for: they are still writing when the VM halts.
    assert Enum.all?(writers, &Process.alive?/1)
  end

  test "a store started on the path of an open store takes it over" do
    for location <- [[dets_file: "takeover.dets"], [data_dir: "takeover"]] do
      {:ok, first} = ContextStore.start_link(storage_opts: location)
      :ok = ContextStore.create(first, :c, :g_counter)
      {:ok, 10} = ContextStore.increment(first, :c, 10)

      {:ok, second} = ContextStore.start_link(storage_opts: location)
      assert {:ok, 10} = ContextStore.get(second, :c)
      assert {:ok, 11} = ContextStore.increment(second, :c)
    end

    # And again until the VM halts, retiring the taken-over stores by stop
    # and by kill in turn.
    spawn(fn ->
      Process.flag(:trap_exit, true)
      churn_takeovers("takeover_churn", nil, 0)
    end)
  end

  test "a store whose owner was killed leaves an unreferenced handle awaiting GC" do
    {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: "killed"])
    Process.unlink(store)
    write_burst!(store, :killed, 1000)
    ref = Process.monitor(store)
    Process.exit(store, :kill)
    assert_receive {:DOWN, ^ref, :process, _, :killed}, 10_000

    # And again until the VM halts, ephemeral and on disk.
    spawn(fn -> churn_kills(0) end)
  end

  # ---------------------------------------------------------------------------

  # Writes to every type and checks the values: acknowledged writes, most of
  # them still pending (relaxed durability) when this returns.
  defp write_burst!(store, prefix, n) do
    counter = {prefix, :counter}
    set = {prefix, :set}
    register = {prefix, :register}
    :ok = ContextStore.create(store, counter, :g_counter)
    :ok = ContextStore.create(store, set, :aw_set)
    :ok = ContextStore.create(store, register, :lww_register)

    for i <- 1..n do
      {:ok, ^i} = ContextStore.update(store, counter, {:increment, 1})
      :ok = ContextStore.update(store, set, {:add, i}, return: :ok)
    end

    value = :binary.copy("v", 4096)
    {:ok, ^value} = ContextStore.set(store, register, value)
    assert {:ok, ^n} = ContextStore.get(store, counter)
    assert {:ok, set_value} = ContextStore.get(store, set)
    assert MapSet.size(set_value) == n
  end

  # Runs `fun` in a process that is never stopped and returns its result:
  # what that process starts is open when the VM halts.
  defp open_lasting!(opts) do
    parent = self()
    ref = make_ref()

    spawn(fn ->
      send(parent, {ref, ContextStore.start_link(opts)})
      Process.sleep(:infinity)
    end)

    receive do
      {^ref, {:ok, store}} -> store
      {^ref, other} -> flunk("store did not start: #{inspect(other)}")
    after
      30_000 -> flunk("store did not start in 30 s")
    end
  end

  # An unlinked process running `fun` until the VM halts, pausing 1 ms
  # between rounds: enough to keep writes pending all the time, without
  # starving the tests that still run on this 2-core class of machine.
  defp forever(fun), do: spawn(fn -> repeat(fun) end)

  defp repeat(fun) do
    fun.()
    Process.sleep(1)
    repeat(fun)
  end

  defp churn_takeovers(dir, previous, i) do
    case ContextStore.start_link(storage_opts: [data_dir: dir]) do
      {:ok, store} ->
        _ = ContextStore.create(store, :c, :g_counter)
        for _ <- 1..50, do: ContextStore.update(store, :c, {:increment, 1})
        if previous, do: retire(previous, i)
        Process.sleep(@churn_pause)
        churn_takeovers(dir, store, i + 1)

      _error ->
        Process.sleep(1)
        churn_takeovers(dir, previous, i + 1)
    end
  end

  defp retire(store, i) do
    if rem(i, 2) == 0 do
      Process.unlink(store)
      Process.exit(store, :kill)
    else
      spawn(fn ->
        try do
          ContextStore.stop(store)
        catch
          :exit, _ -> :ok
        end
      end)
    end

    drain_exits()
  end

  defp drain_exits do
    receive do
      {:EXIT, _, _} -> drain_exits()
    after
      0 -> :ok
    end
  end

  defp churn_kills(i) do
    opts = if rem(i, 2) == 0, do: [], else: [storage_opts: [data_dir: "killed_#{rem(i, 4)}"]]

    case ContextStore.start_link(opts) do
      {:ok, store} ->
        Process.unlink(store)
        _ = ContextStore.create(store, :c, :g_counter)
        for _ <- 1..200, do: ContextStore.update(store, :c, {:increment, 1})
        Process.exit(store, :kill)

      _error ->
        :ok
    end

    Process.sleep(@churn_pause)
    churn_kills(i + 1)
  end
end
