# Run after durability_write.exs in the same working directory: reads the
# acknowledged writes back and prints one line, "durability: ok" or
# "durability: LOST ..." with what was found.
alias Vsmcp.CRDT.ContextStore

n = String.to_integer(System.get_env("DURABILITY_WRITES", "20000"))

{:ok, store} = ContextStore.start_link(storage_opts: [data_dir: "durable"])

found = %{
  counter: ContextStore.get(store, :counter),
  register: ContextStore.get(store, :register),
  default_store_counter: ContextStore.get(ContextStore, :durable_counter),
  set:
    case ContextStore.get(store, :set) do
      {:ok, set} -> {:ok, if(set == MapSet.new(1..n), do: n, else: {:size, MapSet.size(set)})}
      other -> other
    end
}

lost = for {key, value} <- found, value != {:ok, n}, into: %{}, do: {key, value}

if lost == %{} do
  IO.puts("durability: ok")
else
  IO.puts("durability: LOST of #{n} acknowledged writes each, found #{inspect(lost)}")
end

:ok = ContextStore.stop(store)
