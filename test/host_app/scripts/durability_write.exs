# Run in the host project: `mix run durability_write.exs` (working directory
# = the run's directory). Acknowledged writes with the default (relaxed)
# durability to four stores with a data_dir and to the default store, then
# System.halt() at once: no stop, no sync. durability_read.exs must find
# every one of them. Several stores, each with its own flush timer, make it
# likely that one of them has acknowledged writes pending at the halt.
# Every write must be acknowledged; the script fails (exit status 1)
# otherwise.
alias Vsmcp.CRDT.ContextStore

n = String.to_integer(System.get_env("DURABILITY_WRITES", "10000"))

stores =
  for i <- 1..4 do
    {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: "durable/#{i}"])
    :ok = ContextStore.create(store, :counter, :g_counter)
    :ok = ContextStore.create(store, :set, :aw_set)
    :ok = ContextStore.create(store, :register, :lww_register)
    store
  end

:ok = ContextStore.create(ContextStore, :durable_counter, :g_counter)

for i <- 1..n do
  for store <- stores do
    {:ok, ^i} = ContextStore.update(store, :counter, {:increment, 1})
    :ok = ContextStore.update(store, :set, {:add, i}, return: :ok)
    {:ok, ^i} = ContextStore.set(store, :register, i)
  end

  {:ok, ^i} = ContextStore.update(ContextStore, :durable_counter, {:increment, 1})
end

System.halt()
