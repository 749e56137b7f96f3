# Where the NIF's live heap goes per id (issue 18, bench/RESULTS-host_app.md).
#
#   MIX_ENV=prod mix run bench/heap_per_id.exs [N]      # N ids, default 1_000_000
#
# One VM, one store at a time on a fresh data directory: N G-Counter ids
# created and incremented once (results discarded), flushed, 3 s settle;
# then the NIF heap's live bytes (info/1 :memory) per id. First with sync
# off; then the same store reopened with sync on (over :pg, no peer), once
# its digest holds every id (sync_info/1 :digest_ready): the difference is
# the sync engine's per-id state. Then the same with sync on from the start.
alias Vsmcp.CRDT.ContextStore

n =
  case System.argv() do
    [s] -> String.to_integer(s)
    _ -> 1_000_000
  end

tmp = Path.join(System.tmp_dir!(), "heap_per_id_#{System.unique_integer([:positive])}")

live = fn store ->
  Process.sleep(3_000)
  ContextStore.info(store).memory.nif_heap_live_bytes
end

fill = fn store ->
  Enum.each(1..n, fn i ->
    :ok = ContextStore.create(store, {:k, i}, :g_counter)
    {:ok, 1} = ContextStore.increment(store, {:k, i})
  end)

  :ok = ContextStore.sync(store, 120_000)
end

ready = fn store ->
  Stream.repeatedly(fn ->
    Process.sleep(200)
    ContextStore.sync_info(store)[:digest_ready]
  end)
  |> Enum.find(& &1)
end

report = fn label, bytes, base ->
  IO.puts(
    "#{label}: live #{Float.round(bytes / 1_048_576, 1)} MiB, " <>
      "#{div(bytes - base, n)} B per id over the empty store"
  )
end

dir1 = Path.join(tmp, "local")
{:ok, s} = ContextStore.start_link(storage_opts: [data_dir: dir1])
base = live.(s)
report.("empty store, sync off", base, base)
fill.(s)
report.("#{n} ids, sync off", live.(s), base)
:ok = ContextStore.stop(s)

topic = "heap-#{System.unique_integer([:positive])}"

{:ok, s} =
  ContextStore.start_link(
    storage_opts: [data_dir: dir1],
    sync_opts: [topic: topic, transport: :pg]
  )

ready.(s)
report.("same store reopened with sync on, digest ready", live.(s), base)
:ok = ContextStore.stop(s)

dir2 = Path.join(tmp, "synced")

{:ok, s} =
  ContextStore.start_link(
    storage_opts: [data_dir: dir2],
    sync_opts: [topic: topic <> "-2", transport: :pg]
  )

fill.(s)
report.("#{n} ids, sync on from the start (no peer)", live.(s), base)
:ok = ContextStore.stop(s)
File.rm_rf(tmp)
