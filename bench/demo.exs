# A tour of vsmcp_crdt: run with `mix run bench/demo.exs`.
#
# Starts a store on a temporary directory, uses every CRDT type, shows two
# replicas converging with the pure modules, restarts the store and reads
# the data back from RocksDB. Then starts three :peer nodes on 127.0.0.1
# (and epmd) and runs the VSM patterns on one synced store: System 1
# operational counters, System 2 coordination set, System 3 policy register,
# System 4 opportunity set (add-wins), System 5 identity; with a partition
# and its healing, tier movement, a restart from disk and a short report.

alias Vsmcp.CRDT.ContextStore
alias Vsmcp.CRDT.Types.{GCounter, ORSet, LWWRegister}
alias Vsmcp.CRDT.HLC

# The tests' :peer cluster helper; test/support is compiled in MIX_ENV=test
# only, so this script compiles it (see "From a script" there).
cluster_modules = Code.require_file("../test/support/cluster.ex", __DIR__)
alias Vsmcp.Test.Cluster

dir = Path.join(System.tmp_dir!(), "vsmcp_crdt_demo_#{System.unique_integer([:positive])}")
opts = [node_id: :demo_node, storage_opts: [data_dir: dir]]

IO.puts("== store at #{dir}")
{:ok, store} = ContextStore.start_link(opts)

:ok = ContextStore.create(store, :page_views, :g_counter)
{:ok, _} = ContextStore.increment(store, :page_views)
IO.puts("page_views after +1, +5:    #{inspect(ContextStore.increment(store, :page_views, 5))}")

:ok = ContextStore.create(store, :balance, :pn_counter)
{:ok, _} = ContextStore.increment(store, :balance, 10)
IO.puts("balance after +10, -13:     #{inspect(ContextStore.decrement(store, :balance, 13))}")

:ok = ContextStore.create(store, :tags, :or_set)
for t <- ["elixir", "rust", "crdt"], do: {:ok, _} = ContextStore.add(store, :tags, t)
IO.puts("tags after removing rust:   #{inspect(ContextStore.remove(store, :tags, "rust"))}")

:ok = ContextStore.create(store, {:config, "eu-west"}, :lww_register)
{:ok, _} = ContextStore.set(store, {:config, "eu-west"}, %{replicas: 3, mode: :active})
IO.puts("register:                   #{inspect(ContextStore.get(store, {:config, "eu-west"}))}")

IO.puts("unsupported operation:      #{inspect(ContextStore.add(store, :page_views, 1))}")
IO.puts("metadata of :tags:          #{inspect(ContextStore.get_metadata(store, :tags))}")

n = 200_000
{us, _} = :timer.tc(fn -> for _ <- 1..n, do: ContextStore.increment(store, :page_views) end)
IO.puts("#{n} increments from one process: #{Float.round(n / us, 2)} M ops/s")

:ok = ContextStore.sync(store)
:ok = ContextStore.stop(store)

IO.puts("\n== restart on the same directory")
{:ok, store} = ContextStore.start_link(opts)
IO.puts("ids:                        #{inspect(Enum.sort(ContextStore.list_crdts(store)))}")
IO.puts("page_views:                 #{inspect(ContextStore.get(store, :page_views))}")
IO.puts("tags:                       #{inspect(ContextStore.get(store, :tags))}")

IO.puts(
  "tier of :tags after restart: #{inspect(elem(ContextStore.get_metadata(store, :tags), 1).tier)}"
)

IO.puts("stats:                      #{inspect(ContextStore.stats(store))}")
:ok = ContextStore.stop(store)
File.rm_rf(dir)

IO.puts("\n== two replicas converge (pure modules, delta-state)")
c1 = GCounter.new(:node1)
c2 = GCounter.new(:node2)
{c1, d1} = GCounter.increment(c1, 5)
{c2, d2} = GCounter.increment(c2, 3)
m1 = GCounter.merge(c1, d2)
m2 = GCounter.merge(c2, d1)

IO.puts(
  "G-Counter: #{GCounter.value(m1)} == #{GCounter.value(m2)}, equal? #{GCounter.equal?(m1, m2)}"
)

s1 = ORSet.new(:node1)
s2 = ORSet.new(:node2)
{s1, _} = ORSet.add(s1, "item")
{s2, add2} = ORSet.add(s2, "item")
{s1, rm1} = ORSet.remove(s1, "item")

IO.puts(
  "OR-Set (remove-wins), concurrent add and remove: " <>
    "#{inspect(ORSet.value(ORSet.merge(s1, add2)))} / #{inspect(ORSet.value(ORSet.merge(s2, rm1)))}"
)

r = LWWRegister.new(:node1)
{r, _} = LWWRegister.set(r, "first")
{r, _} = LWWRegister.set(r, "second")
IO.puts("LWW-Register: #{inspect(LWWRegister.get(r))}")

clock = HLC.new(:node1)
later = HLC.tick(clock)
IO.puts("HLC: #{HLC.to_string(later)} after #{HLC.to_string(clock)}: #{HLC.after?(later, clock)}")
{:ok, parsed} = HLC.from_string(HLC.to_string(later))
IO.puts("HLC string round trip: #{parsed == later}")

IO.puts("\n== three nodes sync one store (:peer nodes on 127.0.0.1, :pg transport)")
System.cmd("epmd", ["-daemon"])
root = Path.join(System.tmp_dir!(), "vsmcp_crdt_demo_nodes_#{System.unique_integer([:positive])}")

# Connected pairwise, and only through explicit connects (so that the
# partitions below stay partitions); see Vsmcp.Test.Cluster.
nodes =
  Cluster.start(3,
    tmp_dir: root,
    cleanup: :manual,
    load: cluster_modules,
    prefix: "vsmcp_demo",
    app_env: [{:logger, :level, :warning}]
  )

# Every node runs a store named :shared on topic "demo"; node_id is the same
# label everywhere on purpose: replica identity comes from the data directory.
store_opts = fn n ->
  [
    name: :shared,
    node_id: :same_label,
    storage_opts: [data_dir: Path.join(n.dir, "shared")],
    sync_opts: [topic: "demo"]
  ]
end

for n <- nodes, do: {:ok, _} = Cluster.call(n, ContextStore, :start, [store_opts.(n)])

on = fn n, f, args -> Cluster.call(n, ContextStore, f, [:shared | args], 30_000) end

wait = fn check ->
  Enum.reduce_while(1..500, nil, fn _, _ ->
    if check.(), do: {:halt, :ok}, else: Process.sleep(10) && {:cont, :timeout}
  end)
end

[n1, n2, n3] = nodes
:ok = on.(n1, :create, [:visits, :g_counter])
:ok = on.(n2, :create, [:online, :or_set])
:ok = wait.(fn -> Enum.all?(nodes, &match?({:ok, _}, on.(&1, :get, [:online]))) end)

t0 = System.monotonic_time(:millisecond)
for n <- nodes, _ <- 1..1_000, do: {:ok, _} = on.(n, :increment, [:visits, 1])
{:ok, _} = on.(n1, :add, [:online, "ana"])
{:ok, _} = on.(n3, :add, [:online, "bo"])

:ok =
  wait.(fn ->
    Enum.all?(nodes, &(on.(&1, :get, [:visits]) == {:ok, 3_000})) and
      Enum.all?(nodes, &(on.(&1, :get, [:online]) == {:ok, MapSet.new(["ana", "bo"])}))
  end)

IO.puts(
  "3 x 1000 increments and 2 adds on different nodes, converged after the last write in " <>
    "#{System.monotonic_time(:millisecond) - t0} ms (including the writes):"
)

for n <- nodes do
  IO.puts(
    "  #{n.node}: visits #{inspect(on.(n, :get, [:visits]))}, online #{inspect(on.(n, :get, [:online]))}"
  )
end

# A partition: node 3 is cut off, both sides keep writing, then it heals.
Cluster.partition([n1, n2], [n3])
{:ok, _} = on.(n1, :increment, [:visits, 10])
{:ok, _} = on.(n3, :increment, [:visits, 5])

IO.puts(
  "partitioned: node1 sees #{inspect(on.(n1, :get, [:visits]))}, node3 sees #{inspect(on.(n3, :get, [:visits]))}"
)

Cluster.heal([n3], [n1, n2])
:ok = wait.(fn -> Enum.all?(nodes, &(on.(&1, :get, [:visits]) == {:ok, 3_015})) end)
IO.puts("healed: every node sees #{inspect(on.(n2, :get, [:visits]))}")
IO.puts("sync round from node1: #{inspect(on.(n1, :sync, []))}")
info = on.(n1, :sync_info, [])

IO.puts(
  "node1 sync: transport #{inspect(info.transport)}, peers #{length(info.peers)}, " <>
    "bytes sent #{info.counters.bytes_sent}, refused #{inspect(Enum.filter(info.rejected, fn {_, n} -> n > 0 end))}"
)

# ---------------------------------------------------------------------------
IO.puts("\n== the VSM patterns, concurrently on the three nodes")

ms = fn t0 -> System.monotonic_time(:millisecond) - t0 end
report = []

# System 5 (identity) and the other shared ids are created once, anywhere.
:ok = on.(n1, :create, [{:s5, :identity}, :lww_register])
:ok = on.(n1, :create, [{:s1, :operations}, :g_counter])
:ok = on.(n2, :create, [{:s1, :backlog}, :pn_counter])
:ok = on.(n2, :create, [{:s2, :active_units}, :or_set])
:ok = on.(n3, :create, [{:s3, :policy}, :lww_register])
:ok = on.(n3, :create, [{:s4, :opportunities}, :aw_set])
{:ok, _} = on.(n1, :set, [{:s5, :identity}, %{purpose: "demo organisation", version: 1}])

ids = [
  {:s5, :identity},
  {:s1, :operations},
  {:s1, :backlog},
  {:s2, :active_units},
  {:s3, :policy},
  {:s4, :opportunities}
]

t0 = System.monotonic_time(:millisecond)

:ok =
  wait.(fn ->
    Enum.all?(nodes, fn n -> Enum.all?(ids, &match?({:ok, _}, on.(n, :get, [&1]))) end)
  end)

report = [{"6 ids created on three nodes, present everywhere", "#{ms.(t0)} ms"} | report]

# Every node works at once: System 1 counts operations and its backlog,
# System 2 registers its unit, System 3 sets policy, System 4 collects
# opportunities (add-wins: an opportunity re-added concurrently survives).
t0 = System.monotonic_time(:millisecond)

tasks =
  for {n, i} <- Enum.with_index(nodes, 1) do
    Task.async(fn ->
      for k <- 1..500 do
        {:ok, _} = on.(n, :increment, [{:s1, :operations}, 1])
        if rem(k, 5) == 0, do: {:ok, _} = on.(n, :increment, [{:s1, :backlog}, 2])
        if rem(k, 7) == 0, do: {:ok, _} = on.(n, :decrement, [{:s1, :backlog}, 1])
      end

      {:ok, _} = on.(n, :add, [{:s2, :active_units}, "unit-#{i}"])
      {:ok, _} = on.(n, :set, [{:s3, :policy}, %{set_by: n.node, max_load: 10 * i}])
      {:ok, _} = on.(n, :add, [{:s4, :opportunities}, "market-#{i}"])
      if i == 1, do: {:ok, _} = on.(n, :add, [{:s4, :opportunities}, "shared"])
      :ok
    end)
  end

Enum.each(tasks, &Task.await(&1, 120_000))
writes_ms = ms.(t0)
backlog = 3 * (div(500, 5) * 2 - div(500, 7))

converged = fn ->
  values = for n <- nodes, do: Enum.map(ids, &on.(n, :get, [&1]))

  length(Enum.uniq(values)) == 1 and on.(n1, :get, [{:s1, :operations}]) == {:ok, 1_500} and
    on.(n1, :get, [{:s1, :backlog}]) == {:ok, backlog}
end

t1 = System.monotonic_time(:millisecond)
:ok = wait.(converged)

report = [
  {"3 x 500 operations + unit, policy and opportunity writes", "#{writes_ms} ms of writes"},
  {"all three nodes equal after the last write", "#{ms.(t1)} ms"} | report
]

for {label, id} <- [
      {"S1 operations", {:s1, :operations}},
      {"S1 backlog", {:s1, :backlog}},
      {"S2 active units", {:s2, :active_units}},
      {"S3 policy", {:s3, :policy}},
      {"S4 opportunities", {:s4, :opportunities}},
      {"S5 identity", {:s5, :identity}}
    ] do
  {:ok, v} = on.(n2, :get, [id])
  IO.puts("  #{String.pad_trailing(label, 17)} #{inspect(v)}")
end

# A partition while all three systems keep working, then healing.
Cluster.partition([n1, n2], [n3])
{:ok, _} = on.(n1, :increment, [{:s1, :operations}, 100])
{:ok, _} = on.(n3, :increment, [{:s1, :operations}, 50])
{:ok, _} = on.(n3, :remove, [{:s2, :active_units}, "unit-3"])
{:ok, _} = on.(n1, :set, [{:s3, :policy}, %{set_by: :partition_side_a, max_load: 99}])
# Concurrent remove and add of one opportunity: S4 is add-wins.
{:ok, _} = on.(n1, :remove, [{:s4, :opportunities}, "shared"])
{:ok, _} = on.(n3, :add, [{:s4, :opportunities}, "shared"])
t0 = System.monotonic_time(:millisecond)
Cluster.heal([n3], [n1, n2])

:ok =
  wait.(fn ->
    values = for n <- nodes, do: Enum.map(ids, &on.(n, :get, [&1]))
    length(Enum.uniq(values)) == 1 and on.(n2, :get, [{:s1, :operations}]) == {:ok, 1_650}
  end)

report = [{"partition healed: both sides' writes on every node", "#{ms.(t0)} ms"} | report]
IO.puts("after a partition that cut node3 off:")

for {label, id} <- [
      {"S1 operations", {:s1, :operations}},
      {"S2 active units", {:s2, :active_units}},
      {"S3 policy", {:s3, :policy}},
      {"S4 opportunities", {:s4, :opportunities}}
    ] do
  {:ok, v} = on.(n2, :get, [id])
  IO.puts("  #{String.pad_trailing(label, 17)} #{inspect(v)}")
end

IO.puts("  (S4 is add-wins: \"shared\", removed on node1 while node3 re-added it, stays)")

# Tier movement on node2: items leave memory for RocksDB and come back.
:ok = on.(n2, :create, [{:s1, :cold_probe}, :g_counter])
{:ok, _} = on.(n2, :increment, [{:s1, :cold_probe}, 7])
{:ok, %{tier: tier_before}} = on.(n2, :get_metadata, [{:s1, :cold_probe}])
:ok = on.(n2, :decay_now, [])
:ok = on.(n2, :decay_now, [])
:ok = on.(n2, :decay_now, [])
{:ok, %{tier: tier_after}} = on.(n2, :get_metadata, [{:s1, :cold_probe}])
{:ok, 7} = on.(n2, :get, [{:s1, :cold_probe}])

report = [
  {"tier of an idle id on node2: #{tier_before} -> 3 decay passes ->", "#{tier_after}"} | report
]

# A restart of node3's store recovers from disk, then catches up.
:ok = on.(n3, :stop, [])
{:ok, _} = on.(n1, :increment, [{:s1, :operations}, 10])
{:ok, _} = Cluster.call(n3, ContextStore, :start, [store_opts.(n3)])

{:ok, after_restart} = on.(n3, :get, [{:s5, :identity}])
t0 = System.monotonic_time(:millisecond)
:ok = wait.(fn -> on.(n3, :get, [{:s1, :operations}]) == {:ok, 1_660} end)

report = [
  {"node3 caught up with the write made while it was down", "#{ms.(t0)} ms"},
  {"node3 restarted: identity read back from its disk", inspect(after_restart)}
  | report
]

bytes = Enum.sum(for n <- nodes, do: on.(n, :sync_info, []).counters.bytes_sent)
report = [{"bytes handed to the transport by the three stores (whole demo)", "#{bytes}"} | report]

IO.puts("\n== report")

for {what, figure} <- Enum.reverse(report),
    do: IO.puts("  #{String.pad_trailing(what, 62)} #{figure}")

Cluster.stop(nodes)
File.rm_rf(root)
