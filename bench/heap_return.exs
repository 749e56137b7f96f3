# Memory given back after a large set is deleted (issue 16, bench/RESULTS-soak.md).
#
#   MIX_ENV=test mix run bench/heap_return.exs
#
# One store in this VM: an OR-Set of 300,000 {:el, i, "payload-i"} elements
# added one `update` at a time (results discarded), then deleted; prints
# the VM's RSS (/proc/self/status) and the NIF heap's live and resident
# bytes (info/1 :memory) before, after the adds, after the delete and 1,
# 2, 3 and 5 s later.
alias Vsmcp.CRDT.ContextStore, as: CS
dir = Path.join(System.tmp_dir!(), "memexp-#{System.unique_integer([:positive])}")
{:ok, s} = CS.start_link(name: :memexp, storage_opts: [data_dir: dir])

rss = fn ->
  [_, kb] = Regex.run(~r/VmRSS:\s+(\d+)/, File.read!("/proc/self/status"))
  div(String.to_integer(kb), 1024)
end

show = fn label ->
  m = CS.info(s).memory

  IO.puts(
    "#{label}: rss #{rss.()} MiB, live #{div(m.nif_heap_live_bytes, 1_048_576)} MiB, resident #{div(m.nif_heap_resident_bytes, 1_048_576)} MiB"
  )
end

show.("empty")
:ok = CS.create(s, "big", :or_set)

Enum.each(0..299_999, fn i ->
  :ok = CS.update(s, "big", {:add, {:el, i, "payload-#{i}"}}, return: :ok)
end)

show.("300k elements")
:ok = CS.delete(s, "big")
show.("deleted")

for t <- [1, 2, 3, 5] do
  Process.sleep(1000)
  show.("+#{t}s")
end
