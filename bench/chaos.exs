# The long chaos campaign (issue 16): Vsmcp.Test.Chaos over many seeds on
# :peer nodes, results in bench/RESULTS-chaos.md. Needs the test build of
# the NIF (fault injection: write failures, clock skew), so MIX_ENV=test:
#
#   MIX_ENV=test mix run bench/chaos.exs --seeds 200          # seeds 1..200
#   MIX_ENV=test mix run bench/chaos.exs --from 1000 --seeds 50
#   MIX_ENV=test mix run bench/chaos.exs --seed 17            # replay one seed
#   MIX_ENV=test mix run bench/chaos.exs --seeds 200 --minutes 40 --out /tmp/r.md
#
# --steps N fault steps per seed (default 16), --minutes M stops starting
# new seeds after M minutes (the results say how many ran). A failing seed
# prints its report (failures and the last 30 steps) and is listed in the
# results; its node directories are kept under --tmp (default
# System.tmp_dir!()/vsmcp_chaos).

{opts, _, _} =
  OptionParser.parse(System.argv(),
    strict: [
      seeds: :integer,
      from: :integer,
      seed: :integer,
      steps: :integer,
      minutes: :float,
      out: :string,
      tmp: :string
    ]
  )

# In MIX_ENV=test test/support is compiled with the project; otherwise the
# script compiles the harness itself and hands the modules to the nodes.
load =
  if Code.ensure_loaded?(Vsmcp.Test.Chaos) do
    []
  else
    Code.require_file("../test/support/cluster.ex", __DIR__) ++
      Code.require_file("../test/support/chaos.ex", __DIR__)
  end

alias Vsmcp.Test.Chaos

seeds =
  case opts[:seed] do
    nil ->
      from = Keyword.get(opts, :from, 1)
      Enum.to_list(from..(from + Keyword.get(opts, :seeds, 200) - 1))

    seed ->
      [seed]
  end

tmp = Keyword.get(opts, :tmp, Path.join(System.tmp_dir!(), "vsmcp_chaos"))
out = Keyword.get(opts, :out, Path.expand("RESULTS-chaos.md", __DIR__))
steps = Keyword.get(opts, :steps, 16)

deadline =
  System.monotonic_time(:millisecond) + round(Keyword.get(opts, :minutes, 1.0e6) * 60_000)

System.cmd("epmd", ["-daemon"])
Logger.configure(level: :error)
command = "MIX_ENV=test mix run bench/chaos.exs " <> Enum.join(System.argv(), " ")

machine =
  "#{:erlang.system_info(:system_architecture)}, #{System.schedulers_online()} schedulers, " <>
    "#{String.trim(elem(System.cmd("nproc", []), 0))} CPUs (shared with other jobs), " <>
    "OTP #{System.otp_release()}, Elixir #{System.version()}"

write = fn reports, started ->
  elapsed = div(System.monotonic_time(:millisecond) - started, 1000)
  failed = Enum.reject(reports, &(&1.failures == []))
  faults = Enum.reduce(reports, %{}, &Map.merge(&2, &1.faults, fn _, a, b -> a + b end))

  transport = Enum.reduce(reports, %{}, &Map.merge(&2, &1.transport, fn _, a, b -> a + b end))

  kills = Enum.flat_map(reports, &Map.get(&1.losses, :relaxed_kills, []))
  lossy = Enum.filter(kills, &(&1.lost_increments > 0))

  shared =
    reports |> Enum.map(&Map.get(&1.losses, :shared_g_counter_lost)) |> Enum.filter(&is_integer/1)

  durations = Enum.map(reports, & &1.duration_ms)
  nodes = reports |> Enum.frequencies_by(& &1.nodes) |> Enum.sort()

  body = """
  # Chaos campaign results

  Command: `#{command}` (harness: `test/support/chaos.ex`, see
  guides/operations.md "Chaos campaign").

  Machine: #{machine}.

  | | |
  |---|---|
  | seeds run | #{length(reports)} of #{length(seeds)} (#{inspect(List.first(seeds))}..#{inspect(List.last(seeds))}) |
  | seeds failed | #{length(failed)} #{inspect(Enum.map(failed, & &1.seed), charlists: :as_lists)} |
  | nodes per seed | #{Enum.map_join(nodes, ", ", fn {n, c} -> "#{n}: #{c} seeds" end)} |
  | operations acknowledged or attempted | #{Enum.sum(Enum.map(reports, & &1.ops))} |
  | duration | #{elapsed} s in all; per seed mean #{div(Enum.sum(durations), max(length(durations), 1))} ms, max #{Enum.max(durations, fn -> 0 end)} ms |

  Faults injected (steps of the schedules that ran):

  | kind | count |
  |---|---|
  #{Enum.map_join(Enum.sort(faults), "\n", fn {k, v} -> "| #{k} | #{v} |" end)}

  Transport (Transport.Faulty, summed over nodes; nodes killed lose their
  counts since their last start): #{inspect(transport)}.

  Relaxed-durability loss per SIGKILL (`durability: :relaxed` nodes; the
  storage guide allows the last `flush_interval`, 5 ms, of acknowledged
  writes to be lost; the checker accepts a loss of what was acknowledged
  up to 250 ms before the kill, a margin for scheduling on a loaded
  machine): #{length(kills)} kills of relaxed nodes, #{length(lossy)} lost
  anything measurable in the owned g_counters (one writer each); lost
  increments per kill max #{Enum.max(Enum.map(kills, & &1.lost_increments), fn -> 0 end)},
  mean #{if kills == [], do: 0, else: Float.round(Enum.sum(Enum.map(kills, & &1.lost_increments)) / length(kills), 2)};
  age of the oldest lost acknowledgement at the kill: max
  #{Enum.max(Enum.map(lossy, & &1.window_ms), fn -> 0 end)} ms, values
  #{inspect(lossy |> Enum.map(& &1.window_ms) |> Enum.sort() |> Enum.take(-20))}.
  Shared g_counter: acknowledged minus final, per seed: max
  #{Enum.max(shared, fn -> 0 end)}, total #{Enum.sum(shared)} over #{length(shared)} seeds.

  ## Failures

  #{if failed == [], do: "None.", else: Enum.map_join(failed, "\n", &("```\n" <> Chaos.format(&1) <> "```\n"))}
  """

  File.write!(out, body)
end

started = System.monotonic_time(:millisecond)

reports =
  Enum.reduce_while(seeds, [], fn seed, acc ->
    if System.monotonic_time(:millisecond) > deadline do
      {:halt, acc}
    else
      report = Chaos.run(seed, tmp_dir: tmp, steps: steps, load: load)
      status = if report.failures == [], do: "ok", else: "FAILED"

      IO.puts(
        "seed #{seed}: #{status} #{report.nodes} nodes #{report.duration_ms} ms faults #{inspect(report.faults)} losses #{inspect(report.losses)}"
      )

      if report.failures != [], do: IO.puts(Chaos.format(report))
      acc = acc ++ [report]
      write.(acc, started)
      {:cont, acc}
    end
  end)

failed = Enum.count(reports, &(&1.failures != []))
IO.puts("#{length(reports)} seeds, #{failed} failed; results in #{out}")
