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

  `ets_name` and `dets_name` are accepted for compatibility and ignored:
  nothing becomes a named table, so stores given the same names coexist.
  """

  @marker_header "vsmcp_crdt store marker v1"

  # A marker's <random>: Base.url_encode64 of this many random bytes (a
  # multiple of 3, so no padding) gives @random_chars characters.
  @random_bytes 9
  @random_chars div(@random_bytes, 3) * 4

  # Fresh names tried for an ephemeral directory before giving up; with 96
  # random bits a collision means something else is creating these names.
  @ephemeral_attempts 5

  @type t :: %{path: String.t(), ephemeral: boolean()}

  @doc "Resolve the data directory, creating what is missing."
  @spec resolve(keyword()) :: {:ok, t} | {:error, term()}
  def resolve(storage_opts) do
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
      case File.read(path) do
        {:ok, content} -> existing_marker(path, parent, content)
        {:error, :enoent} -> new_marker(path, parent)
        {:error, reason} -> {:error, {:storage_error, "#{path}: #{:file.format_error(reason)}"}}
      end
    end
  end

  defp marker(other), do: {:error, {:invalid_option, :dets_file, other}}

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
      _ -> {:error, {:foreign_data_file, path}}
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
    tmp = path <> ".tmp-#{System.unique_integer([:positive])}"

    with :ok <- File.write(tmp, "#{@marker_header}\ndata: #{name}\n"),
         :ok <- File.rename(tmp, path) do
      {:ok, %{path: Path.join(parent, name), ephemeral: false}}
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
