# One node, no peers: what sync's heartbeat costs a store holding one big
# OR-Set (a reproduction for bench/RESULTS-sync.md, "Big sets").
#
#   MIX_ENV=prod mix run bench/sync_bigset.exs            # N = 1,000,000
#   N=200000 MIX_ENV=prod mix run bench/sync_bigset.exs
#
# For each store configuration, in a fresh VM (RSS is what the allocators
# keep, so one VM's earlier work would show in the next row): N adds then N
# removes of distinct integers (`return: :ok`), their rates and the OS RSS
# 3 s after each; then, with N live elements again: the slowest single add
# during 5 s of adds (a caller waits while a heartbeat hashes the set), the
# time of one heartbeat (`Native.sync_hello/2`, what the store's sync peer
# runs every second) after a single add, and how long a concurrent
# `Native.sync_info/1` (a plain NIF taking the same engine lock) waits.

alias Vsmcp.CRDT.ContextStore
alias Vsmcp.CRDT.Native

n = String.to_integer(System.get_env("N", "1000000"))

configs = [
  {"no sync", []},
  {"sync, heartbeat 1 s (default)", [topic: "bigset", transport: :pg]},
  {"sync, heartbeat 1 h", [topic: "bigset", transport: :pg, heartbeat_interval: 3_600_000]}
]

loadavg = fn ->
  File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ")
end

rss_mib = fn ->
  [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/#{:os.getpid()}/status"))
  div(String.to_integer(kb), 1024)
end

run = fn {label, sync_opts} ->
  Logger.configure(level: :warning)
  dir = Path.join(System.tmp_dir!(), "vsmcp_bigset_#{System.unique_integer([:positive])}")

  {:ok, s} =
    ContextStore.start_link(node_id: :x, storage_opts: [data_dir: dir], sync_opts: sync_opts)

  :ok = ContextStore.create(s, :big, :or_set)
  r0 = rss_mib.()

  {add_us, _} =
    :timer.tc(fn ->
      for i <- 1..n, do: :ok = ContextStore.update(s, :big, {:add, i}, return: :ok)
    end)

  Process.sleep(3_000)
  r1 = rss_mib.()

  {rm_us, _} =
    :timer.tc(fn ->
      for i <- 1..n, do: :ok = ContextStore.update(s, :big, {:remove, i}, return: :ok)
    end)

  Process.sleep(3_000)
  r2 = rss_mib.()

  # Refill: N live elements again (beside the N removed ones).
  for i <- 1..n, do: :ok = ContextStore.update(s, :big, {:add, -i}, return: :ok)

  # The slowest single add (re-adding existing elements) during 5 s of adds.
  slowest =
    Stream.repeatedly(fn ->
      {us, :ok} = :timer.tc(fn -> ContextStore.update(s, :big, {:add, -1}, return: :ok) end)
      us
    end)
    |> Stream.transform(System.monotonic_time(:millisecond) + 5_000, fn us, deadline ->
      if System.monotonic_time(:millisecond) < deadline,
        do: {[us], deadline},
        else: {:halt, deadline}
    end)
    |> Enum.max()

  {hello, during} =
    if sync_opts == [] do
      {"-", "-"}
    else
      {:ok, peer} = GenServer.call(s, :peer)
      Process.sleep(1_000)
      # Suspend the peer (after its current message) so that its own
      # heartbeats stay out of the measurement.
      :sys.suspend(peer, 120_000)
      %{engine: engine} = :sys.get_state(peer, 120_000)
      _ = Native.sync_tick(engine, 0, false)
      _ = Native.sync_hello(engine, false)
      :ok = ContextStore.update(s, :big, {:add, :one_more}, return: :ok)
      # A tick takes the change into the engine (the peer ticks every 5 ms).
      _ = Native.sync_tick(engine, 0, false)
      task = Task.async(fn -> :timer.tc(fn -> Native.sync_hello(engine, false) end) end)
      Process.sleep(20)
      {info_us, _} = :timer.tc(fn -> Native.sync_info(engine) end)
      {hello_us, _} = Task.await(task, 120_000)
      :sys.resume(peer)
      {"#{div(hello_us, 1000)} ms", "#{div(info_us, 1000)} ms"}
    end

  IO.puts(
    "| #{label} | #{r0} MiB | #{round(n / (add_us / 1.0e6))} | #{r1} MiB | " <>
      "#{round(n / (rm_us / 1.0e6))} | #{r2} MiB | #{div(slowest, 1000)} ms | #{hello} | #{during} |"
  )

  ContextStore.stop(s)
  File.rm_rf!(dir)
end

case System.get_env("BIGSET_CONFIG") do
  nil ->
    IO.puts("# one store, one OR-Set of #{n} elements, no peers (load average #{loadavg.()})")

    IO.puts(
      "| store | RSS empty | adds/s | RSS after adds | removes/s | RSS after removes " <>
        "| slowest add in 5 s | heartbeat after 1 add | sync_info NIF during it |"
    )

    IO.puts("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    for i <- 0..(length(configs) - 1) do
      {out, _} =
        System.cmd("mix", ["run", __ENV__.file],
          env: [{"BIGSET_CONFIG", Integer.to_string(i)}],
          stderr_to_stdout: true
        )

      out
      |> String.split("\n")
      |> Enum.filter(&String.starts_with?(&1, "| "))
      |> Enum.each(&IO.puts/1)
    end

    IO.puts("(load average #{loadavg.()})")

  i ->
    run.(Enum.at(configs, String.to_integer(i)))
end
