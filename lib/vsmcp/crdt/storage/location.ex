defmodule Vsmcp.CRDT.Storage.Location do
  @moduledoc """
  Where a store keeps its RocksDB directory, from its `storage_opts`.

  * `data_dir: path` - the modern option: the RocksDB directory itself.
  * `dets_file: path` - the legacy option of the replaced DETS tier. The
    file becomes a small *marker*: a regular file naming a sibling data
    directory `.<basename>.<random>.rocksdb`, where `<random>` is exactly 12
    characters of `[A-Za-z0-9_-]` (9 random bytes, URL-safe Base64). A store
    started on an existing marker recovers that directory; when the marker
    has been deleted (for example with `File.rm/1` after the store stopped)
    the next start writes a new marker naming a *new* directory, so it
    begins empty, and removes the stale directories of earlier markers.
    Because a new marker never names the directory a previous store may
    still hold open, a store restarted while its predecessor shuts down
    never meets RocksDB's lock. Only names of that exact pattern are
    recovered or removed: the directory `.ctx.dets.bak.<random>.rocksdb` of
    a neighbouring `dets_file: "ctx.dets.bak"` is not the stale data of
    `dets_file: "ctx.dets"`.
  * neither - an ephemeral directory `vsmcp_crdt-<random>` under
    `System.tmp_dir!/0`, created fresh (never an existing directory, whose
    name someone could have guessed) and readable by its owner only, and
    removed when the store closes: such a store does not survive a restart.

  A `dets_file` that is a DETS file (the replaced application's cold tier,
  recognised by its header) is imported: `resolve/1` names a fresh data
  directory (as a new marker would) and says so with `:dets_import`;
  `Vsmcp.CRDT.Storage.DetsImport` imports the file into it and then calls
  `complete_import/1`, which keeps the file as `<file>.backup` and puts the
  marker in its place. Until then the file is where it was, so a crash
  before the marker is written makes the next start import again, into
  another fresh directory (the unfinished one is stale and removed).

  `ets_name` and `dets_name` are accepted for compatibility and ignored:
  nothing becomes a named table, so stores given the same names coexist.

  Cost: a few file-system calls (stat, read or write of the marker, a
  listing of the parent directory to remove stale data directories), once
  per store start. Invariant: a marker names exactly one data directory,
  and a newly written marker never names a directory that already exists.
  """

  alias Vsmcp.CRDT.Storage.DetsImport

  @marker_header "vsmcp_crdt store marker v1"

  # A marker's <random>: Base.url_encode64 of this many random bytes (a
  # multiple of 3, so no padding) gives @random_chars characters.
  @random_bytes 9
  @random_chars div(@random_bytes, 3) * 4

  # Fresh names tried for an ephemeral directory before giving up; with 96
  # random bits a collision means something else is creating these names.
  @ephemeral_attempts 5

  # A marker is a few hundred bytes at most, a DETS file may be gigabytes:
  # only this much of a file is read to tell which it is.
  @head_bytes 4096

  # Backup names tried (`<file>.backup`, `<file>.backup.2`, ...).
  @backup_attempts 100

  @typedoc "`:dets_import` (the DETS file to import) only when there is one."
  @type t :: %{
          required(:path) => String.t(),
          required(:ephemeral) => boolean(),
          optional(:dets_import) => String.t()
        }

  @doc """
  Resolve the data directory of `storage_opts` (see the moduledoc),
  creating what is missing: the `data_dir`, the parent directory and
  marker of a `dets_file`, or the ephemeral directory. A `dets_file`'s
  data directory is only named here; the store creates it when it opens.
  Errors: `{:invalid_option, :data_dir | :dets_file, value}`,
  `{:foreign_data_file, path}` (a `dets_file` that is neither a marker
  nor a DETS file) or `{:storage_error, message}`.

      iex> alias Vsmcp.CRDT.Storage.Location
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> Location.resolve(data_dir: dir)
      {:ok, %{path: dir, ephemeral: false}}
      iex> file = Path.join(dir, "ctx.dets")
      iex> {:ok, %{path: data, ephemeral: false}} = Location.resolve(dets_file: file)
      iex> File.read!(file) == "vsmcp_crdt store marker v1\\ndata: \#{Path.basename(data)}\\n"
      true
      iex> Location.resolve(dets_file: file)
      {:ok, %{path: data, ephemeral: false}}
      iex> File.write!(Path.join(dir, "notes.txt"), "my notes")
      iex> Location.resolve(dets_file: Path.join(dir, "notes.txt"))
      {:error, {:foreign_data_file, Path.join(dir, "notes.txt")}}
      iex> {:ok, %{path: tmp, ephemeral: true}} = Location.resolve([])
      iex> File.rmdir(tmp)
      :ok
  """
  @spec resolve(keyword()) :: {:ok, t} | {:error, term()}
  def resolve(storage_opts) when is_list(storage_opts) do
    cond do
      dir = storage_opts[:data_dir] -> data_dir(dir)
      file = storage_opts[:dets_file] -> marker(file)
      true -> ephemeral()
    end
  end

  defp data_dir(dir) when is_binary(dir) or is_list(dir) do
    path = Path.expand(to_string(dir))

    case File.mkdir_p(path) do
      :ok -> {:ok, %{path: path, ephemeral: false}}
      {:error, reason} -> {:error, {:storage_error, "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  defp data_dir(other), do: {:error, {:invalid_option, :data_dir, other}}

  # A predictable name in a shared temporary directory could be created
  # first by someone else (a directory they can read, or a symlink): the name
  # is random and File.mkdir/1 fails on anything already there.
  defp ephemeral(attempts \\ @ephemeral_attempts) do
    path = Path.join(System.tmp_dir!(), "vsmcp_crdt-" <> random(12))

    case File.mkdir(path) do
      :ok ->
        case File.chmod(path, 0o700) do
          :ok ->
            {:ok, %{path: path, ephemeral: true}}

          {:error, reason} ->
            File.rmdir(path)
            storage_error(path, reason)
        end

      {:error, :eexist} when attempts > 1 ->
        ephemeral(attempts - 1)

      {:error, reason} ->
        storage_error(path, reason)
    end
  end

  defp random(bytes), do: Base.url_encode64(:crypto.strong_rand_bytes(bytes))

  defp storage_error(path, reason),
    do: {:error, {:storage_error, "#{path}: #{:file.format_error(reason)}"}}

  defp marker(file) when is_binary(file) or is_list(file) do
    path = Path.expand(to_string(file))
    parent = Path.dirname(path)

    with :ok <- mkdir(parent) do
      case read_head(path) do
        {:ok, content} -> existing_marker(path, parent, content)
        {:error, :enoent} -> new_marker(path, parent)
        {:error, reason} -> {:error, {:storage_error, "#{path}: #{:file.format_error(reason)}"}}
      end
    end
  end

  defp marker(other), do: {:error, {:invalid_option, :dets_file, other}}

  defp read_head(path) do
    case File.open(path, [:read, :binary], &IO.binread(&1, @head_bytes)) do
      {:ok, data} when is_binary(data) -> {:ok, data}
      {:ok, :eof} -> {:ok, ""}
      {:ok, {:error, reason}} -> {:error, reason}
      {:error, reason} -> {:error, reason}
    end
  end

  defp mkdir(dir) do
    case File.mkdir_p(dir) do
      :ok -> :ok
      {:error, reason} -> {:error, {:storage_error, "#{dir}: #{:file.format_error(reason)}"}}
    end
  end

  defp existing_marker(path, parent, content) do
    with [@marker_header, "data: " <> name | _] <- String.split(content, "\n"),
         true <- valid_name?(path, name) do
      {:ok, %{path: Path.join(parent, name), ephemeral: false}}
    else
      _ ->
        if DetsImport.dets_header?(content),
          do: dets_location(path, parent),
          else: {:error, {:foreign_data_file, path}}
    end
  end

  # The replaced application's DETS file: a fresh directory to import it
  # into. No marker names any directory yet, so every directory of this
  # file's pattern is what an unfinished import left.
  defp dets_location(path, parent) do
    base = Path.basename(path)
    remove_stale(parent, base)
    name = ".#{base}.#{random(@random_bytes)}.rocksdb"
    {:ok, %{path: Path.join(parent, name), ephemeral: false, dets_import: path}}
  end

  @doc """
  Finish an import (see the moduledoc): keep the DETS file `dets_import`
  as a backup next to it, byte for byte (a hard link, or a copy on a
  filesystem without them), then replace it by a marker naming `path`,
  atomically. `{:ok, backup_path}`; the backup is `<file>.backup`, or
  `<file>.backup.<n>` when that name is taken by another file.

      iex> alias Vsmcp.CRDT.Storage.Location
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> File.mkdir_p!(dir)
      iex> file = Path.join(dir, "crdt_storage.dets")
      iex> {:ok, table} = :dets.open_file(make_ref(), file: String.to_charlist(file))
      iex> :ok = :dets.close(table)
      iex> {:ok, location} = Location.resolve(dets_file: file)
      iex> location.dets_import == file
      true
      iex> Location.complete_import(location)
      {:ok, file <> ".backup"}
      iex> Location.resolve(dets_file: file)
      {:ok, %{path: location.path, ephemeral: false}}
  """
  @spec complete_import(t) :: {:ok, String.t()} | {:error, term()}
  def complete_import(%{path: dir, dets_import: file}) do
    with {:ok, backup} <- backup(file, 1),
         :ok <- write_marker(file, Path.basename(dir)) do
      {:ok, backup}
    end
  end

  defp backup(file, n) when n > @backup_attempts,
    do: {:error, {:storage_error, "#{file}: no free backup name"}}

  defp backup(file, n) do
    name = if n == 1, do: file <> ".backup", else: "#{file}.backup.#{n}"

    case File.ln(file, name) do
      :ok ->
        {:ok, name}

      # Made by an earlier attempt that stopped before the marker.
      {:error, :eexist} ->
        if same_file?(file, name), do: {:ok, name}, else: backup(file, n + 1)

      {:error, _no_links} ->
        case File.cp(file, name, on_conflict: fn _, _ -> false end) do
          :ok -> {:ok, name}
          {:error, reason} -> storage_error(name, reason)
        end
    end
  end

  defp same_file?(a, b) do
    with {:ok, sa} <- File.stat(a), {:ok, sb} <- File.stat(b) do
      {sa.inode, sa.major_device} == {sb.inode, sb.major_device}
    else
      _ -> false
    end
  end

  # Exactly `.<base>.<random>.rocksdb` with <random> as new_marker/2 makes
  # it. A looser match (any name with that prefix and suffix) would take
  # `.ctx.dets.bak.<random>.rocksdb`, the directory of the neighbouring
  # store `ctx.dets.bak`, for one of `ctx.dets`.
  defp valid_name?(path, name), do: own_data_name?(Path.basename(path), name)

  defp own_data_name?(base, name) do
    size = byte_size(base)

    case name do
      <<".", ^base::binary-size(size), ".", random::binary-size(@random_chars), ".rocksdb">> ->
        random =~ ~r/\A[A-Za-z0-9_-]+\z/

      _ ->
        false
    end
  end

  defp new_marker(path, parent) do
    base = Path.basename(path)
    name = ".#{base}.#{random(@random_bytes)}.rocksdb"
    remove_stale(parent, base)

    with :ok <- write_marker(path, name) do
      {:ok, %{path: Path.join(parent, name), ephemeral: false}}
    end
  end

  # Atomically: a reader sees the old file or the whole marker.
  defp write_marker(path, name) do
    tmp = path <> ".tmp-#{System.unique_integer([:positive])}"

    with :ok <- File.write(tmp, "#{@marker_header}\ndata: #{name}\n"),
         :ok <- File.rename(tmp, path) do
      :ok
    else
      {:error, reason} ->
        File.rm(tmp)
        {:error, {:storage_error, "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  # Directories of deleted markers. One that a store of this OS process
  # still has open (a predecessor still closing) is left for a later start:
  # removing it under RocksDB makes its last flush fail, and RocksDB then
  # pauses every flush of the process for a second.
  defp open?(dir), do: Vsmcp.CRDT.Native.store_path_open(dir)

  defp remove_stale(parent, base) do
    case File.ls(parent) do
      {:ok, names} ->
        for n <- names, own_data_name?(base, n), dir = Path.join(parent, n), not open?(dir) do
          File.rm_rf(dir)
        end

      _ ->
        :ok
    end
  end
end
