# A tour of vsmcp_crdt: run with `mix run bench/demo.exs`.
#
# Starts a store on a temporary directory, uses every CRDT type, shows two
# replicas converging with the pure modules, restarts the store and reads
# the data back from RocksDB.

alias Vsmcp.CRDT.ContextStore
alias Vsmcp.CRDT.Types.{GCounter, ORSet, LWWRegister}
alias Vsmcp.CRDT.HLC

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
