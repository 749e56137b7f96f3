# Run after durability_write.exs in the same working directory: reads the
# acknowledged writes back and prints one line, "durability: ok" or
# "durability: LOST ..." with what was found where.
alias Vsmcp.CRDT.ContextStore

n = String.to_integer(System.get_env("DURABILITY_WRITES", "10000"))

set_value = fn store ->
  case ContextStore.get(store, :set) do
    {:ok, set} -> {:ok, if(set == MapSet.new(1..n), do: n, else: {:size, MapSet.size(set)})}
    other -> other
  end
end

found =
  for i <- 1..4 do
    {:ok, store} = ContextStore.start_link(storage_opts: [data_dir: "durable/#{i}"])

    values = %{
      counter: ContextStore.get(store, :counter),
      register: ContextStore.get(store, :register),
      set: set_value.(store)
    }

    :ok = ContextStore.stop(store)
    {"durable/#{i}", values}
  end

found = [{"default store", %{counter: ContextStore.get(ContextStore, :durable_counter)}} | found]

lost =
  for {where, values} <- found,
      bad = for({key, value} <- values, value != {:ok, n}, into: %{}, do: {key, value}),
      bad != %{},
      do: {where, bad}

if lost == [] do
  IO.puts("durability: ok")
else
  IO.puts("durability: LOST of #{n} acknowledged writes each, found #{inspect(lost)}")
end
