defmodule Vsmcp.Test.LegacyDets do
  @moduledoc """
  DETS files in the exact shape the replaced application wrote: a `:set`
  of `{crdt_id, {crdt_type, crdt}}`, with `crdt` a map of the old struct's
  fields, with (`struct: true`, the default) or without the old module
  name under `:__struct__`.

      LegacyDets.write!(path, [
        {:hits, {:g_counter, LegacyDets.g_counter(%{n1: 5, n2: 3})}},
        {:tags, {:or_set, LegacyDets.or_set(%{"x" => [{:n1, 1}]}, %{})}}
      ])

  `write!/2` takes any enumerable and writes it in chunks with
  `:dets.init_table/2` (one pass, far faster than inserts for 1M entries).
  """

  @g_counter Vsmcp.CRDT.Types.GCounter
  @pn_counter Vsmcp.CRDT.Types.PNCounter
  @or_set Vsmcp.CRDT.Types.ORSet
  @lww_register Vsmcp.CRDT.Types.LWWRegister

  @chunk 10_000

  @doc "Write `entries` to a new DETS file at `path` and close it properly."
  def write!(path, entries, opts \\ []) do
    File.rm(path)
    name = make_ref()

    {:ok, table} =
      :dets.open_file(name,
        file: String.to_charlist(path),
        type: :set,
        min_no_slots: Keyword.get(opts, :min_no_slots, 256)
      )

    # One chunk at a time, never the whole enumerable in memory.
    chunks = Stream.chunk_every(entries, @chunk)
    next = &Enumerable.reduce(chunks, &1, fn chunk, _ -> {:suspend, chunk} end)
    :ok = :dets.init_table(table, reader(next.({:cont, nil})))
    :ok = :dets.close(table)
    path
  end

  defp reader({:suspended, chunk, continue}) do
    fn
      :read -> {chunk, reader(continue.({:cont, nil}))}
      :close -> continue.({:halt, nil}) && :ok
    end
  end

  defp reader({done, _}) when done in [:done, :halted] do
    fn
      :read -> :end_of_input
      :close -> :ok
    end
  end

  @doc "An old G-Counter: `counters` is node id => count."
  def g_counter(counters, opts \\ []),
    do: old(@g_counter, %{node_id: node_id(opts), counters: counters}, opts)

  @doc "An old PN-Counter: increments and decrements per node."
  def pn_counter(positive, negative, opts \\ []) do
    fields = %{
      node_id: node_id(opts),
      positive: g_counter(positive, opts),
      negative: g_counter(negative, opts)
    }

    old(@pn_counter, fields, opts)
  end

  @doc """
  An old OR-Set: `elements` and `tombstones` are element => tags, a tag
  `{node_id, integer_timestamp}`; lists become `MapSet`s.
  """
  def or_set(elements, tombstones, opts \\ []) do
    fields = %{
      node_id: node_id(opts),
      elements: Map.new(elements, fn {e, tags} -> {e, MapSet.new(tags)} end),
      tombstones: Map.new(tombstones, fn {e, tags} -> {e, MapSet.new(tags)} end)
    }

    old(@or_set, fields, opts)
  end

  @doc "An old LWW-Register: its timestamp was `System.monotonic_time/0`."
  def lww_register(value, opts \\ []) do
    fields = %{
      node_id: node_id(opts),
      value: value,
      timestamp: Keyword.get(opts, :timestamp, System.monotonic_time())
    }

    old(@lww_register, fields, opts)
  end

  defp node_id(opts), do: Keyword.get(opts, :node_id, :old_node)

  defp old(module, fields, opts) do
    if Keyword.get(opts, :struct, true), do: Map.put(fields, :__struct__, module), else: fields
  end

  @doc "SHA-256 of a file's bytes."
  def hash!(path), do: :crypto.hash(:sha256, File.read!(path))
end

defmodule Vsmcp.Test.LegacyDets.Bulk do
  @moduledoc """
  Entry `i` of a large legacy file (every type in turn) and the value a
  store gives for it after the import: the 1M-entry test and
  `bench/dets_import.exs`.
  """

  alias Vsmcp.Test.LegacyDets

  @doc "Entry `{:id, i}`."
  def entry(i) do
    id = {:id, i}

    case rem(i, 4) do
      0 ->
        {id, {:g_counter, LegacyDets.g_counter(%{n1: i, n2: 1})}}

      1 ->
        {id, {:pn_counter, LegacyDets.pn_counter(%{n1: i}, %{n2: 1}, struct: false)}}

      2 ->
        set = LegacyDets.or_set(%{i => [{:n1, i}], :gone => [{:n1, 1}]}, %{gone: [{:n1, 1}]})
        {id, {:or_set, set}}

      3 ->
        {id, {:lww_register, LegacyDets.lww_register("v#{i}", struct: false)}}
    end
  end

  @doc "`ContextStore.get/2` of `{:id, i}` after the import."
  def expected(i) do
    case rem(i, 4) do
      0 -> {:ok, i + 1}
      1 -> {:ok, i - 1}
      2 -> {:ok, MapSet.new([i])}
      3 -> {:ok, "v#{i}"}
    end
  end
end
