defmodule Vsmcp.CRDT.Storage.Location do
  @moduledoc """
  Where a store keeps its RocksDB directory, from its `storage_opts`.

  * `data_dir: path` - the modern option: the RocksDB directory itself.
  * `dets_file: path` - the legacy option of the replaced DETS tier. The
    file becomes a small *marker*: a regular file naming a sibling data
    directory `.<basename>.<random>.rocksdb`. A store started on an existing
    marker recovers that directory; when the marker has been deleted (for
    example with `File.rm/1` after the store stopped) the next start writes a
    new marker naming a *new* directory, so it begins empty, and removes the
    stale directories of earlier markers. Because a new marker never names
    the directory a previous store may still hold open, a store restarted
    while its predecessor shuts down never meets RocksDB's lock.
  * neither - an ephemeral directory under `System.tmp_dir!/0`, removed when
    the store closes: such a store does not survive a restart.

  `ets_name` and `dets_name` are accepted for compatibility and ignored:
  nothing becomes a named table, so stores given the same names coexist.
  """

  @marker_header "vsmcp_crdt store marker v1"

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

  defp ephemeral do
    name = "vsmcp_crdt-#{System.pid()}-#{System.unique_integer([:positive])}"
    data_dir(Path.join(System.tmp_dir!(), name)) |> mark_ephemeral()
  end

  defp mark_ephemeral({:ok, loc}), do: {:ok, %{loc | ephemeral: true}}
  defp mark_ephemeral(error), do: error

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

  defp valid_name?(path, name) do
    prefix = "." <> Path.basename(path) <> "."

    String.starts_with?(name, prefix) and String.ends_with?(name, ".rocksdb") and
      not String.contains?(name, ["/", "\\", "\0"]) and name not in [".", ".."]
  end

  defp new_marker(path, parent) do
    base = Path.basename(path)
    name = ".#{base}.#{Base.url_encode64(:crypto.strong_rand_bytes(9))}.rocksdb"
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

  # Directories of deleted markers. A predecessor still closing may hold one
  # open: unlinking its files is harmless on POSIX systems.
  defp remove_stale(parent, base) do
    prefix = "." <> base <> "."

    case File.ls(parent) do
      {:ok, names} ->
        for n <- names, String.starts_with?(n, prefix), String.ends_with?(n, ".rocksdb") do
          File.rm_rf(Path.join(parent, n))
        end

      _ ->
        :ok
    end
  end
end
