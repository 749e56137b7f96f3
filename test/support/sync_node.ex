defmodule Vsmcp.Test.SyncNode do
  @moduledoc false
  # Helpers run on :peer nodes (through Vsmcp.Test.Cluster.call/4): stores
  # started there must outlive the call's process, so they are unlinked.

  alias Vsmcp.CRDT.ContextStore

  @doc "Start a named store that outlives the caller."
  def start_store(opts) do
    Logger.configure(level: :warning)

    with {:ok, pid} <- ContextStore.start_link(opts) do
      Process.unlink(pid)
      {:ok, pid}
    end
  end

  @doc "Start the application's default store (Vsmcp.CRDT.Supervisor), unlinked."
  def start_default(opts \\ []) do
    Logger.configure(level: :warning)

    with {:ok, pid} <- Vsmcp.CRDT.Supervisor.start_link(opts) do
      Process.unlink(pid)
      {:ok, pid}
    end
  end

  @doc "Increment `id` of `store` `n` times by 1 (a burst); returns the count done."
  def burst(store, id, n) do
    Enum.reduce(1..n, 0, fn _, acc ->
      case ContextStore.increment(store, id, 1) do
        {:ok, _} -> acc + 1
        _ -> acc
      end
    end)
  end

  @doc "`n` increments spread over `ids` counters `{:k, 1..ids}` (created if missing)."
  def spread(store, ids, n) do
    for i <- 1..ids, do: ContextStore.create(store, {:k, i}, :g_counter)

    Enum.each(1..n, fn j ->
      {:ok, _} = ContextStore.increment(store, {:k, rem(j, ids) + 1}, 1)
    end)

    n
  end

  @doc "Add (or remove) every element of `range` to the set `id`."
  def add_range(store, id, range), do: each(range, &ContextStore.add(store, id, &1))
  def remove_range(store, id, range), do: each(range, &ContextStore.remove(store, id, &1))

  defp each(range, f) do
    Enum.each(range, fn x -> {:ok, _} = f.(x) end)
    :ok
  end

  @doc "Set `id` to a `bytes`-long binary made here; returns its hash."
  def set_big(store, id, bytes) do
    value = :binary.copy(<<1, 2, 3, 4>>, div(bytes, 4))
    {:ok, _} = ContextStore.set(store, id, value)
    :erlang.phash2(value)
  end

  @doc "The hash and size of register `id`'s value (`nil` when unset)."
  def value_hash(store, id) do
    case ContextStore.get(store, id) do
      {:ok, v} when is_binary(v) -> {:erlang.phash2(v), byte_size(v)}
      other -> other
    end
  end

  @doc "Whether an atom named `name` exists on this node (creates none)."
  def atom_exists?(name) do
    _ = :erlang.binary_to_existing_atom(name, :utf8)
    true
  rescue
    ArgumentError -> false
  end

  @doc "The sum of the counters made by `spread/3`."
  def spread_sum(store, ids) do
    Enum.reduce(1..ids, 0, fn i, acc ->
      case ContextStore.get(store, {:k, i}) do
        {:ok, v} -> acc + v
        _ -> acc
      end
    end)
  end

  @doc "Collect `{:crdt_changed, ...}` messages: subscribe a collector process."
  def start_collector(store, ids) do
    parent = self()

    pid =
      spawn(fn ->
        :ok = ContextStore.subscribe(store, ids)
        send(parent, :subscribed)
        collect([])
      end)

    receive do
      :subscribed -> {:ok, pid}
    after
      5_000 -> {:error, :timeout}
    end
  end

  @doc "What a collector got so far: `[{id, origin}]`, oldest first."
  def collected(pid) do
    ref = make_ref()
    send(pid, {:get, self(), ref})

    receive do
      {^ref, got} -> got
    after
      5_000 -> :timeout
    end
  end

  defp collect(acc) do
    receive do
      {:crdt_changed, _store, id, origin} -> collect([{id, origin} | acc])
      {:get, from, ref} -> send(from, {ref, Enum.reverse(acc)}) && collect(acc)
    end
  end
end
