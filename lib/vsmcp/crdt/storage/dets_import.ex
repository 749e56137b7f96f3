defmodule Vsmcp.CRDT.Storage.DetsImport do
  @moduledoc """
  Upgrade in place from the replaced application's DETS cold tier.

  A store started with `dets_file: path` where `path` is still the old
  application's DETS file (a `:set` of `{crdt_id, {crdt_type, crdt}}`)
  imports its entries before `start_link/1` returns, and from then on
  behaves as any store on a `dets_file` (see
  `Vsmcp.CRDT.Storage.Location`):

    1. `Location.resolve/1` recognises the file by its header and names a
       fresh data directory.
    2. `run/2` copies the file to `.<file>.<random>.import` beside it and
       opens the copy (read only; a copy of a file the old application did
       not close properly is repaired as DETS would have repaired the
       original at its next start, and a warning is logged). The original
       is never opened, so it stays byte for byte as it was.
    3. Entries are read 1,000 at a time (`:dets.select/3`), checked and
       normalised here, and imported by one NIF call per batch on a dirty
       IO scheduler (the NIF's `store_import/2`; the semantics per
       type are in `native/vsmcp_crdt_core/src/store/import.rs`). The
       number read must equal the table's object count, or the file is
       damaged.
    4. The store writes everything to RocksDB and records the path under
       the metadata key `migrated_from`; `Location.complete_import/1` keeps
       the file as `<file>.backup` (a hard link: the same bytes) and puts
       the marker in its place. A second start finds the marker and
       imports nothing.

  An entry whose id, set element or register value is larger than the
  store's `max_value_bytes` (in canonical encoding) cannot be stored at
  all: it is skipped and the rest is imported. The import then logs a
  warning with the number of skipped entries and the first 10 of their
  ids, counts them in its summary line, and `run/2` returns all of them;
  their data stays in `<file>.backup`.

  On any other failure the copy and the new directory are removed, the
  original is untouched, and `start_link/1` returns
  `{:error, {:dets_import_failed, path, reason}}` with `reason` one of
  DETS's own (`{:not_a_dets_file, path}`, `{:needs_repair, path}`, ...,
  naming the original), `{:damaged, %{objects: n, read: m}}`,
  `{:bad_entry, crdt_id, why}` (an entry of another shape: the upgrade
  does not drop entries it does not understand, so it imports nothing)
  or a store error.

  ## Trust

  The DETS file is the operator's own local data and is decoded trusted,
  exactly as the replaced application read it: `:dets` decodes its terms
  with `binary_to_term/1`, creating the atoms they name (and pids,
  references and funs as stored). Import only the file the old
  application wrote on this machine, never one from an untrusted source:
  a crafted file could exhaust the atom table, which stops the node, or
  inject terms the application never wrote. (Bytes from peers are a
  different matter: see "Trust model" in the README.)

  The old structs are matched as plain maps, with or without `:__struct__`:

  | type | fields used |
  |---|---|
  | `:g_counter` | `counters` (node id => count) |
  | `:pn_counter` | `positive`, `negative` (each a G-Counter map) |
  | `:or_set` | `elements` (element => tags), `tombstones` (element => removed tags; optional) |
  | `:lww_register` | `value` (`nil`: never set) |

  and `created_at` (ms since the epoch, or a `DateTime`) when an entry has
  it. Cost: one pass over the file; once the store's tiers are full,
  about 10 µs of NIF work per entry (a RocksDB point read and a
  demotion); 14-17 s for 1M entries on a quiet 2-vCPU machine
  (`bench/dets_import.exs`). The copy needs the file's size in free disk
  space while importing.
  """

  require Logger

  alias Vsmcp.CRDT.Native
  alias Vsmcp.CRDT.Telemetry
  alias Vsmcp.CRDT.Storage.Location

  @batch 1_000
  # Skipped ids named in the warning (all of them are in run/2's result).
  @skipped_logged 10
  # DETS (format 9) file header: free lists pointer, cookie, closed
  # properly flag, type, version.
  @cookie 0x00ABCDEF
  @version 9
  @max_count 2 ** 64 - 1
  @types [:g_counter, :pn_counter, :or_set, :lww_register]
  # How long a store that failed to import may take to close.
  @close_deadline 5_000

  @doc """
  Whether `head`, the first bytes of a file, is a DETS file header.

      iex> Vsmcp.CRDT.Storage.DetsImport.dets_header?("not a DETS file")
      false
  """
  @spec dets_header?(binary()) :: boolean()
  def dets_header?(<<_free::32, @cookie::32, _closed::32, _type::32, @version::32, _::binary>>),
    do: true

  def dets_header?(_), do: false

  @typedoc """
  What an import did: entries `imported`, per type (types with none left
  out), the ids of the entries `skipped` because an id, element or value
  is larger than `max_value_bytes`, and where the DETS file is kept.
  """
  @type report :: %{
          imported: non_neg_integer(),
          types: %{optional(atom()) => pos_integer()},
          skipped: [term()],
          backup: String.t()
        }

  @doc """
  Import the DETS file named by `location` (the map of
  `Vsmcp.CRDT.ContextStore.Options.to_native/1`, which has `:dets_import`
  when there is one) into the just opened store `handle`; see the
  moduledoc. `{:ok, report}` once imported, `:ok` when `location` names no
  DETS file to import, or `{:error, reason}` after closing `handle` and
  removing its directory. `Vsmcp.CRDT.ContextStore.start_link/1` calls it;
  the report is logged.

  Below, a file of the old shape with a counter, a register and a register
  whose value is larger than the store's `max_value_bytes`, which is
  skipped; the file is then a marker, and a store started on it has what
  was imported:

      iex> alias Vsmcp.CRDT.{ContextStore, ContextStore.Options, Native, Storage.DetsImport}
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> File.mkdir_p!(dir)
      iex> file = Path.join(dir, "crdt_storage.dets")
      iex> {:ok, table} = :dets.open_file(make_ref(), file: String.to_charlist(file))
      iex> :ok = :dets.insert(table, {:views, {:g_counter, %{counters: %{n1: 3, n2: 4}}}})
      iex> :ok = :dets.insert(table, {:mode, {:lww_register, %{value: :safe}}})
      iex> :ok = :dets.insert(table, {:blob, {:lww_register, %{value: :binary.copy("x", 100)}}})
      iex> :ok = :dets.close(table)
      iex> {:ok, location} = Options.to_native(storage_opts: [dets_file: file, max_value_bytes: 64])
      iex> {:ok, handle} = Native.store_open(location)
      iex> DetsImport.run(handle, location)
      {:ok, %{imported: 2, types: %{g_counter: 1, lww_register: 1}, skipped: [:blob], backup: file <> ".backup"}}
      iex> Native.store_close(handle, 5_000)
      :ok
      iex> {:ok, s} = ContextStore.start_link(storage_opts: [dets_file: file])
      iex> Enum.map([:views, :mode, :blob], &ContextStore.get(s, &1))
      [{:ok, 7}, {:ok, :safe}, {:error, :not_found}]
      iex> ContextStore.stop(s)
      :ok
  """
  @spec run(term(), map()) :: :ok | {:ok, report()} | {:error, term()}
  def run(handle, %{dets_import: file, path: dir} = location) do
    Telemetry.span([:vsmcp_crdt, :store, :dets_import], %{file: file, path: dir}, fn ->
      import_and_report(handle, file, dir, location)
    end)
  end

  def run(_handle, _location), do: :ok

  defp import_and_report(handle, file, dir, location) do
    started = System.monotonic_time(:millisecond)

    result =
      with {:ok, summary} <- import_file(handle, file),
           :ok <- finish(handle, file),
           {:ok, backup} <- Location.complete_import(location) do
        {:ok, summary, backup}
      end

    case result do
      {:ok, summary, backup} ->
        report = %{
          imported: summary.read - length(summary.skipped),
          types: Map.reject(summary.types, fn {_type, n} -> n == 0 end),
          skipped: Enum.reverse(summary.skipped),
          backup: backup
        }

        log(file, dir, report, summary.max, System.monotonic_time(:millisecond) - started)
        {:ok, report}

      {:error, reason} ->
        Native.store_close(handle, @close_deadline)
        File.rm_rf(dir)
        {:error, {:dets_import_failed, file, reason}}
    end
  end

  defp finish(handle, file) do
    case Native.store_finish_import(handle, file) do
      :ok -> :ok
      {:error, reason} -> {:error, reason}
    end
  end

  defp log(file, dir, report, max, ms) do
    counts = Enum.map_join(@types, ", ", fn t -> "#{t}: #{Map.get(report.types, t, 0)}" end)

    skipped =
      case report.skipped do
        [] ->
          ""

        ids ->
          Logger.warning(
            "Vsmcp.CRDT: skipped #{length(ids)} #{entries(length(ids))} of the DETS file " <>
              "#{file} whose id, set element or register value is larger than " <>
              "max_value_bytes (#{max} bytes); #{first_ids(ids)}. Their data stays in " <>
              "#{report.backup}.",
            domain: [:vsmcp_crdt, :import],
            crdt_dets_file: file
          )

          "; skipped #{length(ids)} #{entries(length(ids))} larger than max_value_bytes"
      end

    Logger.info(
      "Vsmcp.CRDT: imported #{report.imported} entries (#{counts}) from the DETS file " <>
        "#{file} in #{ms} ms into #{dir}#{skipped}; the DETS file is kept as #{report.backup}",
      domain: [:vsmcp_crdt, :import],
      crdt_dets_file: file
    )
  end

  defp entries(1), do: "entry"
  defp entries(_), do: "entries"

  # Ids may be large terms (an id over max_value_bytes is one reason to
  # skip): each is shown shortened.
  defp first_ids(ids) do
    shown = ids |> Enum.take(@skipped_logged) |> Enum.map_join(", ", &short/1)

    if length(ids) > @skipped_logged,
      do: "the first #{@skipped_logged} ids: #{shown}",
      else: "ids: #{shown}"
  end

  defp short(term), do: inspect(term, limit: 8, printable_limit: 64)

  # ---------------------------------------------------------------------------
  # Reading a copy

  defp import_file(handle, file) do
    before = fingerprint(file)
    copy = copy_name(file)

    result =
      try do
        with :ok <- copy(file, copy),
             {:ok, table} <- open_copy(copy, file) do
          try do
            read_all(handle, table)
          after
            :dets.close(table)
          end
        end
      after
        File.rm(copy)
      end

    with {:ok, _} = ok <- rename_copy(result, copy, file) do
      # The old application must be stopped: a file it wrote to meanwhile
      # holds entries the copy did not have.
      if fingerprint(file) == before,
        do: ok,
        else: {:error, {:changed_during_import, "the file changed while it was imported"}}
    end
  end

  defp fingerprint(file) do
    case File.stat(file, time: :posix) do
      {:ok, st} -> {st.size, st.mtime, st.inode}
      {:error, reason} -> {:error, reason}
    end
  end

  defp copy_name(file) do
    remove_stale_copies(file)
    random = Base.url_encode64(:crypto.strong_rand_bytes(9))
    Path.join(Path.dirname(file), ".#{Path.basename(file)}.#{random}.import")
  end

  # Copies an interrupted import left (a crash, a kill): exactly
  # `.<file>.<12 random characters>.import`.
  defp remove_stale_copies(file) do
    dir = Path.dirname(file)
    base = Regex.escape(Path.basename(file))
    pattern = ~r/\A\.#{base}\.[A-Za-z0-9_-]{12}\.import\z/

    case File.ls(dir) do
      {:ok, names} -> for n <- names, n =~ pattern, do: File.rm(Path.join(dir, n))
      {:error, _} -> :ok
    end
  end

  defp copy(file, copy) do
    case File.cp(file, copy) do
      :ok -> :ok
      {:error, reason} -> {:error, {:storage_error, "#{copy}: #{:file.format_error(reason)}"}}
    end
  end

  # A file the old application did not close (it crashed) needs a repair,
  # which DETS does at open by default: done on the copy. One that was
  # closed and still needs a repair was damaged since, and repairing would
  # silently drop entries.
  defp open_copy(copy, file) do
    name = make_ref()
    path = String.to_charlist(copy)

    case :dets.open_file(name, file: path, access: :read, repair: false) do
      {:ok, table} ->
        {:ok, table}

      {:error, {:needs_repair, _}} = error ->
        if closed_properly?(copy) do
          error
        else
          Logger.warning(
            "Vsmcp.CRDT: the DETS file #{file} was not closed properly; " <>
              "importing a repaired copy (the file itself is not changed)",
            domain: [:vsmcp_crdt, :import],
            crdt_dets_file: file
          )

          :dets.open_file(name, file: path, access: :read_write, repair: true)
        end

      {:error, _} = error ->
        error
    end
  end

  defp closed_properly?(copy) do
    case File.open(copy, [:read, :binary], &IO.binread(&1, 12)) do
      {:ok, <<_::32, @cookie::32, 1::32>>} -> true
      _ -> false
    end
  end

  # The copy's name in DETS's reasons becomes the original's.
  defp rename_copy({:error, reason}, copy, file), do: {:error, replace(reason, copy, file)}
  defp rename_copy(other, _copy, _file), do: other

  defp replace(term, copy, file) do
    cond do
      term == copy or term == String.to_charlist(copy) -> file
      is_tuple(term) -> term |> Tuple.to_list() |> replace(copy, file) |> List.to_tuple()
      is_list(term) and not List.improper?(term) -> Enum.map(term, &replace(&1, copy, file))
      true -> term
    end
  end

  defp read_all(handle, table) do
    objects = :dets.info(table, :size)
    first = :dets.select(table, [{:_, [], [:"$_"]}], @batch)

    summary = %{read: 0, types: %{}, skipped: [], max: nil}

    with {:ok, summary} <- read_chunks(handle, first, summary) do
      if summary.read == objects,
        do: {:ok, summary},
        else: {:error, {:damaged, %{objects: objects, read: summary.read}}}
    end
  end

  defp read_chunks(_handle, :"$end_of_table", summary), do: {:ok, summary}
  defp read_chunks(_handle, {:error, _} = error, _summary), do: error

  defp read_chunks(handle, {objects, cont}, summary) do
    with {:ok, entries, summary} <- normalise(objects, [], summary),
         {:ok, summary} <- store(handle, entries, summary) do
      read_chunks(handle, :dets.select(cont), summary)
    end
  end

  defp store(_handle, [], summary), do: {:ok, summary}

  defp store(handle, entries, summary) do
    case Native.store_import(handle, entries) do
      {:ok, _changed} ->
        {:ok, summary}

      # Too large to store at all: skipped. The NIF imported the entries
      # before it and stopped there; the rest of the batch goes on.
      {:error, {:entry, id, {:value_too_large, _size, max} = reason}} ->
        case Enum.drop_while(entries, fn {entry_id, _, _, _} -> entry_id !== id end) do
          [{_id, type, _, _} | rest] ->
            summary = %{
              summary
              | types: Map.update!(summary.types, type, &(&1 - 1)),
                skipped: [id | summary.skipped],
                max: max
            }

            store(handle, rest, summary)

          [] ->
            {:error, {:bad_entry, id, reason}}
        end

      # The store's trouble, not the entry's.
      {:error, {:entry, _id, {:storage_error, _} = reason}} ->
        {:error, reason}

      {:error, {:entry, _id, :closed}} ->
        {:error, :closed}

      {:error, {:entry, id, reason}} ->
        {:error, {:bad_entry, id, reason}}

      {:error, _} = error ->
        error
    end
  end

  # ---------------------------------------------------------------------------
  # The old shapes, as the NIF takes them (see native/vsmcp_crdt_nif/src/import.rs)

  defp normalise([], acc, summary), do: {:ok, acc, summary}

  defp normalise([object | rest], acc, summary) do
    case entry(object) do
      {:ok, {_id, type, _, _} = e} ->
        summary = %{
          summary
          | read: summary.read + 1,
            types: Map.update(summary.types, type, 1, &(&1 + 1))
        }

        normalise(rest, [e | acc], summary)

      {:error, _} = error ->
        error
    end
  end

  defp entry({id, {type, crdt}}) when is_map(crdt) do
    case payload(type, crdt) do
      {:ok, payload} -> {:ok, {id, type, payload, created_at(crdt)}}
      {:error, why} -> {:error, {:bad_entry, id, why}}
    end
  end

  defp entry(object) when is_tuple(object) and tuple_size(object) > 0,
    do: {:error, {:bad_entry, elem(object, 0), :not_a_crdt_entry}}

  defp entry(_object), do: {:error, {:bad_entry, nil, :not_a_crdt_entry}}

  defp payload(:g_counter, %{counters: counters}), do: counts(counters)

  defp payload(:pn_counter, %{positive: %{counters: p}, negative: %{counters: n}}) do
    with {:ok, p} <- counts(p), {:ok, n} <- counts(n), do: {:ok, {p, n}}
  end

  defp payload(:or_set, %{elements: elements} = set) when is_map(elements) do
    case Map.get(set, :tombstones, %{}) do
      tombstones when is_map(tombstones) -> live(Map.to_list(elements), tombstones, [])
      _ -> {:error, :invalid_tombstones}
    end
  end

  defp payload(:lww_register, %{value: nil}), do: {:ok, nil}
  defp payload(:lww_register, %{value: value}), do: {:ok, {:value, value}}
  defp payload(type, _crdt) when type in @types, do: {:error, {:missing_fields, type}}
  defp payload(type, _crdt), do: {:error, {:unknown_type, type}}

  defp counts(counters) when is_map(counters) do
    Enum.reduce_while(counters, {:ok, []}, fn
      {node, n}, {:ok, acc} when is_integer(n) and n >= 0 and n <= @max_count ->
        {:cont, {:ok, [{node, n} | acc]}}

      {node, n}, _ ->
        {:halt, {:error, {:invalid_count, node, n}}}
    end)
  end

  defp counts(_), do: {:error, :invalid_counters}

  # An element is live while one of its tags is not tombstoned.
  defp live([], _tombstones, acc), do: {:ok, acc}

  defp live([{element, tags} | rest], tombstones, acc) do
    with {:ok, tags} <- tag_set(tags),
         {:ok, removed} <- tag_set(Map.get(tombstones, element, [])) do
      if Enum.any?(tags, &(not MapSet.member?(removed, &1))),
        do: live(rest, tombstones, [element | acc]),
        else: live(rest, tombstones, acc)
    else
      _ -> {:error, {:invalid_tags, element}}
    end
  end

  defp tag_set(%MapSet{} = tags), do: {:ok, tags}
  defp tag_set(tags) when is_list(tags), do: {:ok, MapSet.new(tags)}
  defp tag_set(_), do: :error

  defp created_at(crdt) do
    case Map.get(crdt, :created_at) do
      ms when is_integer(ms) and ms >= 0 and ms <= @max_count -> ms
      %DateTime{} = dt -> max(DateTime.to_unix(dt, :millisecond), 0)
      _ -> nil
    end
  end
end
