# Upgrade in place from the replaced application's DETS file: how long a
# store takes to start on a DETS file of N entries (every type in turn, as
# test/support/legacy_dets.ex writes them), and whether the BEAM stays
# responsive meanwhile.
#
#   MIX_ENV=prod mix run bench/dets_import.exs [entries]   (default 1_000_000)
#
# Prints a table; results with the machine and the command go to
# bench/RESULTS-store.md.

Code.require_file("../test/support/legacy_dets.ex", __DIR__)

alias Vsmcp.CRDT.ContextStore
alias Vsmcp.Test.LegacyDets
alias Vsmcp.Test.LegacyDets.Bulk

n =
  case System.argv() do
    [count] -> String.to_integer(count)
    [] -> 1_000_000
  end

Logger.configure(level: :warning)
dir = Path.join(System.tmp_dir!(), "vsmcp_crdt_bench_dets_#{System.unique_integer([:positive])}")
File.mkdir_p!(dir)
file = Path.join(dir, "crdt_storage.dets")

ms = fn f ->
  t = System.monotonic_time(:microsecond)
  r = f.()
  {r, (System.monotonic_time(:microsecond) - t) / 1000}
end

{_, write_ms} =
  ms.(fn -> LegacyDets.write!(file, Stream.map(1..n, &Bulk.entry/1), min_no_slots: n) end)

size = File.stat!(file).size

# Responsiveness while importing: the largest lateness of a 1 ms timer in a
# process of normal priority, and long_schedule reports (a process or port
# holding a normal scheduler for more than 10 ms without yielding).
parent = self()

ticker =
  spawn_link(fn ->
    loop = fn loop, worst ->
      t = System.monotonic_time(:microsecond)

      receive do
        :stop -> send(parent, {:worst_tick_ms, worst / 1000})
      after
        1 ->
          late = System.monotonic_time(:microsecond) - t - 1000
          loop.(loop, max(worst, late))
      end
    end

    loop.(loop, 0)
  end)

monitor =
  spawn_link(fn ->
    :erlang.system_monitor(self(), [{:long_schedule, 10}])

    loop = fn loop, acc ->
      receive do
        {:monitor, _pid, :long_schedule, info} -> loop.(loop, [info[:timeout] | acc])
        :stop -> send(parent, {:long_schedules, acc})
      end
    end

    loop.(loop, [])
  end)

{{:ok, store}, import_ms} =
  ms.(fn -> ContextStore.start_link(node_id: :bench, storage_opts: [dets_file: file]) end)

send(ticker, :stop)
send(monitor, :stop)
worst_tick = receive(do: ({:worst_tick_ms, w} -> w))
long = receive(do: ({:long_schedules, l} -> l))

for i <- [1, 2, 3, 4, n] do
  ^i = i
  {:ok, _} = ContextStore.get(store, {:id, i})
  true = ContextStore.get(store, {:id, i}) == Bulk.expected(i)
end

:ok = ContextStore.stop(store)

{{:ok, again}, restart_ms} =
  ms.(fn -> ContextStore.start_link(storage_opts: [dets_file: file]) end)

true = ContextStore.get(again, {:id, n}) == Bulk.expected(n)
:ok = ContextStore.stop(again)

[data_dir] = Path.wildcard(Path.join(dir, ".crdt_storage.dets.*.rocksdb"), match_dot: true)
{du, 0} = System.cmd("du", ["-sk", data_dir])
rocks_kb = du |> String.split() |> hd() |> String.to_integer()
File.rm_rf!(dir)

rows = [
  {"entries", n},
  {"DETS file", "#{Float.round(size / 1_048_576, 1)} MiB"},
  {"writing it (:dets.init_table/2)", "#{round(write_ms)} ms"},
  {"start_link importing it",
   "#{round(import_ms)} ms (#{round(n / import_ms * 1000)} entries/s)"},
  {"RocksDB directory after", "#{Float.round(rocks_kb / 1024, 1)} MiB"},
  {"second start (no import)", "#{round(restart_ms)} ms"},
  {"worst lateness of a 1 ms timer meanwhile", "#{Float.round(worst_tick, 1)} ms"},
  {"long_schedule (> 10 ms) reports meanwhile",
   "#{length(long)}#{if long != [], do: " (max #{Enum.max(long)} ms)", else: ""}"}
]

IO.puts("\n| figure | value |\n|---|---:|")
for {k, v} <- rows, do: IO.puts("| #{k} | #{v} |")
