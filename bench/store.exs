# Benchmarks of Vsmcp.CRDT.ContextStore through its public Elixir API.
#
#   MIX_ENV=prod mix run bench/store.exs            # full run (several minutes)
#   QUICK=1 mix run bench/store.exs                 # smaller sizes, for a smoke test
#
# Prints one table per section; results with machine and command are kept in
# bench/RESULTS-store.md.

alias Vsmcp.CRDT.ContextStore

defmodule Bench do
  def quick?, do: System.get_env("QUICK") in ["1", "true"]

  def tmp_dir(tag) do
    dir = Path.join(System.tmp_dir!(), "vsmcp_bench_#{tag}_#{System.unique_integer([:positive])}")
    File.rm_rf(dir)
    dir
  end

  def start(tag, storage \\ []) do
    dir = tmp_dir(tag)

    {:ok, store} =
      ContextStore.start_link(
        node_id: :bench,
        storage_opts: Keyword.merge([data_dir: dir, decay_interval: 3_600_000], storage)
      )

    {store, dir}
  end

  def stop({store, dir}) do
    ContextStore.stop(store)
    File.rm_rf(dir)
  end

  # Call `fun.(p, i)` for i in 1..n without building a result list.
  def loop(_fun, _p, 0), do: :ok

  def loop(fun, p, n) do
    fun.(p, n)
    loop(fun, p, n - 1)
  end

  # Run `fun.(process_index, i)` `per_proc` times in each of `procs`
  # processes; returns total ops/s.
  def parallel(procs, per_proc, fun) do
    parent = self()

    {us, _} =
      :timer.tc(fn ->
        pids =
          for p <- 1..procs do
            spawn_link(fn ->
              loop(fun, p, per_proc)
              send(parent, {:done, self()})
            end)
          end

        for pid <- pids, do: receive(do: ({:done, ^pid} -> :ok))
      end)

    procs * per_proc / (us / 1_000_000)
  end

  def fmt_rate(r) when r >= 1_000_000, do: "#{Float.round(r / 1_000_000, 2)} M/s"
  def fmt_rate(r), do: "#{round(r / 1000)} k/s"

  def row(cols),
    do:
      IO.puts("| " <> Enum.map_join(cols, " | ", &String.pad_trailing(to_string(&1), 22)) <> " |")

  def percentile(sorted, p),
    do: Enum.at(sorted, min(length(sorted) - 1, trunc(length(sorted) * p)))
end

n_ops = if Bench.quick?(), do: 50_000, else: 400_000

IO.puts("# vsmcp_crdt store benchmarks")

IO.puts(
  "schedulers: #{System.schedulers_online()}, OTP #{System.otp_release()}, Elixir #{System.version()}\n"
)

# --- per-operation throughput -------------------------------------------------
IO.puts("## Operations (ops/s, total across callers)")
Bench.row(["operation", "1 process", "2 processes", "16 processes"])

ctx = Bench.start("ops")
{store, _} = ctx

for t <- [:g_counter, :pn_counter, :or_set, :lww_register], p <- 1..16 do
  :ok = ContextStore.create(store, {t, p}, t)
end

ops = [
  {"create",
   fn p, i -> ContextStore.create(store, {:new, p, i, :erlang.unique_integer()}, :g_counter) end},
  {"get (counter)", fn p, _ -> ContextStore.get(store, {:g_counter, p}) end},
  {"increment", fn p, _ -> ContextStore.increment(store, {:g_counter, p}) end},
  {"increment (shared id)", fn _, _ -> ContextStore.increment(store, {:pn_counter, 1}) end},
  {"add (100-elem set, return: :ok)",
   fn p, i -> ContextStore.update(store, {:or_set, p}, {:add, rem(i, 100)}, return: :ok) end},
  {"add (100-elem set, returns MapSet)",
   fn p, i -> ContextStore.add(store, {:or_set, p}, rem(i, 100)) end},
  {"set (register)", fn p, i -> ContextStore.set(store, {:lww_register, p}, i) end}
]

for {name, fun} <- ops do
  rates =
    for procs <- [1, 2, 16] do
      per = div(n_ops, procs)
      name |> then(fn _ -> Bench.parallel(procs, per, fun) end) |> Bench.fmt_rate()
    end

  Bench.row([name | rates])
end

Bench.stop(ctx)

# --- strict durability --------------------------------------------------------
IO.puts("\n## increment with durability: :strict (each acknowledged after its WAL write)")
Bench.row(["", "1 process", "2 processes", "16 processes"])
dir = Bench.tmp_dir("strict")

{:ok, strict} =
  ContextStore.start_link(node_id: :bench, durability: :strict, storage_opts: [data_dir: dir])

for p <- 1..16, do: :ok = ContextStore.create(strict, p, :g_counter)
n_strict = div(n_ops, 10)

rates =
  for procs <- [1, 2, 16] do
    Bench.parallel(procs, div(n_strict, procs), fn p, _ -> ContextStore.increment(strict, p) end)
    |> Bench.fmt_rate()
  end

Bench.row(["increment (strict)" | rates])
ContextStore.stop(strict)
File.rm_rf(dir)

# --- big OR-Sets --------------------------------------------------------------
IO.puts("\n## OR-Set add / get at size N (one process)")
Bench.row(["N", "add (return: :ok)", "add (returns value)", "get (full MapSet)"])
sizes = if Bench.quick?(), do: [1_000, 100_000], else: [1_000, 100_000, 1_000_000]

for n <- sizes do
  ctx = Bench.start("set#{n}")
  {store, _} = ctx
  :ok = ContextStore.create(store, :big, :or_set)
  for i <- 1..n, do: :ok = ContextStore.update(store, :big, {:add, i}, return: :ok)

  # Value-returning calls at size ~N (each builds an N-element MapSet).
  k = if n >= 100_000, do: 3, else: 300
  {us_v, _} = :timer.tc(fn -> for i <- 1..k, do: ContextStore.add(store, :big, -i) end)
  {us_g, _} = :timer.tc(fn -> for _ <- 1..k, do: ContextStore.get(store, :big) end)

  # Adds of new elements from size N (100k of them: N grows by 100k).
  m = 100_000

  {us, _} =
    :timer.tc(fn ->
      Bench.loop(
        fn _, i -> ContextStore.update(store, :big, {:add, n + i}, return: :ok) end,
        1,
        m
      )
    end)

  add_rate = m / (us / 1_000_000)

  Bench.row([
    n,
    Bench.fmt_rate(add_rate),
    "#{Float.round(us_v / k / 1000, 2)} ms/op",
    "#{Float.round(us_g / k / 1000, 2)} ms/op"
  ])

  Bench.stop(ctx)
end

# --- cold tier ----------------------------------------------------------------
IO.puts("\n## Cold-tier get latency (id only on disk, block cache warm)")
n_cold = if Bench.quick?(), do: 20_000, else: 200_000
ctx = Bench.start("cold", memory_limit: 1, ets_limit: 1)
{store, _} = ctx
for i <- 1..n_cold, do: :ok = ContextStore.create(store, i, :g_counter)
:ok = ContextStore.sync(store)
ContextStore.decay_now(store)
ContextStore.decay_now(store)

samples =
  for _ <- 1..20_000 do
    id = :rand.uniform(n_cold)
    {us, {:ok, 0}} = :timer.tc(fn -> ContextStore.get(store, id) end)
    us
  end
  |> Enum.sort()

Bench.row(["ids on disk", "p50", "p99", "max"])

Bench.row([
  n_cold,
  "#{Bench.percentile(samples, 0.5)} µs",
  "#{Bench.percentile(samples, 0.99)} µs",
  "#{List.last(samples)} µs"
])

Bench.stop(ctx)

# --- demotion-heavy -----------------------------------------------------------
IO.puts(
  "\n## Demotion-heavy workloads (memory_limit 1000, ets_limit 10000, access_threshold 2, 2 processes)"
)

Bench.row(["working set", "increments", "rate", "hot/warm after"])

for ids <- [10_000, if(Bench.quick?(), do: 20_000, else: 100_000)] do
  ctx = Bench.start("demote#{ids}", memory_limit: 1_000, ets_limit: 10_000, access_threshold: 2)
  {store, _} = ctx
  for i <- 1..ids, do: :ok = ContextStore.create(store, i, :g_counter)
  ops_d = if Bench.quick?(), do: 100_000, else: 400_000

  rate =
    Bench.parallel(2, div(ops_d, 2), fn p, i ->
      {:ok, _} = ContextStore.increment(store, rem(i * 7919 + p, ids) + 1)
    end)

  st = ContextStore.stats(store)
  label = if ids <= 10_000, do: "#{ids} ids (hot<->warm churn)", else: "#{ids} ids (mostly cold)"
  Bench.row([label, ops_d, Bench.fmt_rate(rate), "#{st.hot}/#{st.warm}"])
  Bench.stop(ctx)
end

# --- memory per key -----------------------------------------------------------
IO.puts("\n## Memory per key (hot tier, G-Counter ids {:k, i})")
keys = if Bench.quick?(), do: 100_000, else: 1_000_000
ctx = Bench.start("mem", memory_limit: keys * 2, ets_limit: keys * 2)
{store, _} = ctx

rss = fn ->
  String.to_integer(String.trim(elem(System.cmd("ps", ["-o", "rss=", "-p", System.pid()]), 0))) *
    1024
end

:erlang.garbage_collect()
before = rss.()
for i <- 1..keys, do: :ok = ContextStore.create(store, {:k, i}, :g_counter)
for i <- 1..keys, do: {:ok, 1} = ContextStore.increment(store, {:k, i})
:ok = ContextStore.sync(store)
:erlang.garbage_collect()
# Steady state: the allocator's freed pages purged (jemalloc's 1 s decay).
Process.sleep(3_000)
after_ = rss.()
live = ContextStore.info(store).memory[:nif_heap_live_bytes]
Bench.row(["keys", "RSS growth", "bytes/key", "NIF heap live bytes/key"])

Bench.row([
  keys,
  "#{div(after_ - before, 1_048_576)} MiB",
  div(after_ - before, keys),
  if(is_integer(live), do: div(live, keys), else: "-")
])

Bench.stop(ctx)

# --- restart ------------------------------------------------------------------
IO.puts("\n## Restart with N stored ids (time until start_link returns, then first get)")
n_restart = if Bench.quick?(), do: 100_000, else: 1_000_000
dir = Bench.tmp_dir("restart")
opts = [node_id: :bench, storage_opts: [data_dir: dir, memory_limit: 1_000, ets_limit: 10_000]]
{:ok, store} = ContextStore.start_link(opts)
for i <- 1..n_restart, do: :ok = ContextStore.create(store, i, :g_counter)
:ok = ContextStore.stop(store)
{us_start, {:ok, store}} = :timer.tc(fn -> ContextStore.start_link(opts) end)
{us_get, {:ok, 0}} = :timer.tc(fn -> ContextStore.get(store, div(n_restart, 2)) end)
st = ContextStore.stats(store)
Bench.row(["ids", "start_link", "first get", "in memory after"])
Bench.row([n_restart, "#{div(us_start, 1000)} ms", "#{us_get} µs", st.hot + st.warm])
:ok = ContextStore.stop(store)
File.rm_rf(dir)

# --- default store in a host application (issue 7 §6) -------------------------
# The application's default store, started by Vsmcp.CRDT.Supervisor and
# called without a store argument (so every call includes the name lookup).
IO.puts("\n## Default store (Vsmcp.CRDT.Supervisor, no store argument, one process)")
dir = Bench.tmp_dir("default")

{:ok, sup} =
  Vsmcp.CRDT.Supervisor.start_link(storage_opts: [data_dir: dir, decay_interval: 3_600_000])

Process.unlink(sup)
grow_rounds = if Bench.quick?(), do: 1, else: 3

# Adds returning the value while a set grows from 0 to 5,000 elements.
grow_rates =
  for r <- 1..grow_rounds do
    :ok = ContextStore.create({:grow, r}, :or_set)

    {us, _} =
      :timer.tc(fn ->
        Bench.loop(fn _, i -> {:ok, _} = ContextStore.add({:grow, r}, i) end, 1, 5_000)
      end)

    5_000 / (us / 1_000_000)
  end

n_get5k = if Bench.quick?(), do: 2_000, else: 20_000

{us, _} =
  :timer.tc(fn ->
    Bench.loop(fn _, _ -> {:ok, _} = ContextStore.get({:grow, 1}) end, 1, n_get5k)
  end)

get5k_rate = n_get5k / (us / 1_000_000)

:ok = ContextStore.create(:reg, :lww_register)

# CPU time too (all threads of the VM): on a shared machine it moves less
# than the wall-clock rate.
{cpu0, _} = :erlang.statistics(:runtime)

{us, _} =
  :timer.tc(fn -> Bench.loop(fn _, i -> {:ok, _} = ContextStore.set(:reg, i) end, 1, n_ops) end)

{cpu1, _} = :erlang.statistics(:runtime)
lww_rate = n_ops / (us / 1_000_000)
lww_cpu_ns = round((cpu1 - cpu0) * 1_000_000 / n_ops)

Bench.row(["add returning value, 0->5,000", "get (5,000-elem set)", "set (register)", ""])

Bench.row([
  Enum.map_join(grow_rates, " / ", &"#{round(&1)}/s"),
  "#{round(get5k_rate)}/s",
  "#{Bench.fmt_rate(lww_rate)} (CPU #{lww_cpu_ns} ns/op)",
  ""
])

# Get of a 200,000-element set, beside the cost of only copying such a value.
big_n = 200_000
:ok = ContextStore.create(:huge, :or_set)
# update/4 with options takes the store: the default store by its name.
for i <- 1..big_n, do: :ok = ContextStore.update(ContextStore, :huge, {:add, i}, return: :ok)
ms_of = fn us -> Float.round(us / 1000, 2) end

timed = fn k, fun ->
  samples = for _ <- 1..k, do: elem(:timer.tc(fun), 0)
  sorted = Enum.sort(samples)
  {Bench.percentile(sorted, 0.5), hd(sorted), List.last(sorted)}
end

:erlang.garbage_collect()
mem0 = :erlang.memory(:total)
# In a function, so that the value is garbage once it returns.
first_us =
  (fn ->
     {us, {:ok, first}} = :timer.tc(fn -> ContextStore.get(:huge) end)
     ^big_n = MapSet.size(first)
     us
   end).()

:erlang.garbage_collect()
mem1 = :erlang.memory(:total)
{get_p50, get_min, get_max} = timed.(20, fn -> {:ok, _} = ContextStore.get(:huge) end)

{add_p50, add_min, add_max} =
  timed.(20, fn -> {:ok, _} = ContextStore.add(:huge, -System.unique_integer([:positive])) end)

# The floor: copying the same MapSet into another process's heap (a send,
# acknowledged once received).
prebuilt = MapSet.new(1..big_n)

receiver =
  spawn_link(fn ->
    loop = fn loop ->
      receive do
        {:copy, m, from} ->
          send(from, {:got, map_size(m.map)})
          loop.(loop)
      end
    end

    loop.(loop)
  end)

{send_p50, send_min, _} =
  timed.(20, fn ->
    send(receiver, {:copy, prebuilt, self()})
    receive(do: ({:got, _} -> :ok))
  end)

{etf_p50, _, _} = timed.(20, fn -> :erlang.binary_to_term(:erlang.term_to_binary(prebuilt)) end)

Bench.row(["200,000-elem set", "p50", "min", "max"])
Bench.row(["first get", "#{ms_of.(first_us)} ms", "", ""])
Bench.row(["get", "#{ms_of.(get_p50)} ms", "#{ms_of.(get_min)} ms", "#{ms_of.(get_max)} ms"])

Bench.row([
  "add returning value",
  "#{ms_of.(add_p50)} ms",
  "#{ms_of.(add_min)} ms",
  "#{ms_of.(add_max)} ms"
])

Bench.row(["floor: send to a process", "#{ms_of.(send_p50)} ms", "#{ms_of.(send_min)} ms", ""])
Bench.row(["term_to_binary+back", "#{ms_of.(etf_p50)} ms", "", ""])

Bench.row([
  "memory kept by first get",
  "#{div(mem1 - mem0, 1024)} KiB",
  "#{Float.round((mem1 - mem0) / big_n, 1)} B/elem",
  ""
])

:ok = Supervisor.stop(sup)
File.rm_rf(dir)
