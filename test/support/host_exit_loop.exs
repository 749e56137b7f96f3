# The exit loop of `Vsmcp.CRDT.HostExitLoop`, standalone: builds the host
# project once, runs its `mix test` N times and the durability rounds, and
# prints each run's exit status as it comes, then the summary.
#
#     export CARGO_TARGET_DIR=$HOME/.cache/vsmcp_crdt/target
#     MIX_ENV=test mix run test/support/host_exit_loop.exs [--runs 30] [--durability 5] [--keep]
#
# `mix run` compiles this repository first (cargo included), so the loop
# always uses the current NIF. --keep leaves the host project and the run
# directories (printed) for inspection; otherwise each run's directory is
# removed as soon as the run is over (a store open at VM halt leaves its
# ~70 MB preallocated write-ahead log behind). Exits 0 when every run exited
# 0 and no acknowledged write was lost, 1 otherwise.
alias Vsmcp.CRDT.HostExitLoop

{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [runs: :integer, durability: :integer, keep: :boolean]
  )

runs = Keyword.get(opts, :runs, 30)
rounds = Keyword.get(opts, :durability, 5)

base = Path.join(System.tmp_dir!(), "vsmcp_crdt_exit_loop_#{System.unique_integer([:positive])}")

File.rm_rf!(base)
File.mkdir_p!(base)
IO.puts("host project in #{base}; compiling once")
{build_us, ctx} = :timer.tc(fn -> HostExitLoop.build!(base) end)
IO.puts("compiled in #{div(build_us, 1000)} ms")

progress = fn
  %{kind: :suite} = r ->
    IO.puts("suite run #{r.run}: exit #{HostExitLoop.describe(r.status)} (#{r.ms} ms)")

  %{kind: :durability} = d ->
    IO.puts(
      "durability round #{d.run}: writer exit #{HostExitLoop.describe(d.write.status)}, " <>
        "reader exit #{HostExitLoop.describe(d.read.status)}, #{d.verdict || "(no verdict)"}"
    )
end

{loop_us, results} =
  :timer.tc(fn ->
    HostExitLoop.run(ctx,
      runs: runs,
      durability_rounds: rounds,
      progress: progress,
      keep: opts[:keep] || false
    )
  end)

IO.puts("\n" <> HostExitLoop.report(results))
IO.puts("loop took #{div(loop_us, 1000)} ms")

if opts[:keep], do: IO.puts("kept #{base}"), else: File.rm_rf!(base)
System.halt(if HostExitLoop.ok?(results), do: 0, else: 1)
