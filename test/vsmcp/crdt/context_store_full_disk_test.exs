defmodule Vsmcp.CRDT.ContextStoreFullDiskTest do
  # A real full disk: the store's directory is a small tmpfs. Mounting needs
  # root (CI and the build machines run as root); elsewhere test_helper.exs
  # excludes the :needs_mount tag and says so.
  use ExUnit.Case, async: false

  alias Vsmcp.CRDT.ContextStore

  @moduletag :needs_mount

  setup do
    dir = Path.join(System.tmp_dir!(), "vsmcp_full_disk_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    {_, 0} = System.cmd("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", dir])

    on_exit(fn ->
      System.cmd("umount", ["-l", dir])
      File.rm_rf(dir)
    end)

    {:ok, dir: dir}
  end

  test "a full disk makes writes fail with an error while the store stays up and reads work",
       %{dir: dir} do
    {:ok, store} =
      ContextStore.start_link(
        node_id: :full_disk,
        storage_opts: [data_dir: Path.join(dir, "db"), flush_interval: 1]
      )

    :ok = ContextStore.create(store, :c, :g_counter)
    {:ok, 1} = ContextStore.increment(store, :c)
    :ok = ContextStore.create(store, :blob, :lww_register)
    :ok = ContextStore.sync(store)

    # Incompressible values until the 8 MiB filesystem refuses a write.
    big = :crypto.strong_rand_bytes(256 * 1024)

    outcome =
      Enum.reduce_while(1..400, :never_failed, fn i, acc ->
        with {:ok, _} <- ContextStore.set(store, :blob, {i, big}),
             :ok <- ContextStore.sync(store) do
          {:cont, acc}
        else
          {:error, reason} -> {:halt, reason}
        end
      end)

    assert {:storage_error, message} = outcome
    assert message =~ dir

    # The store is alive, reads still answer, further writes are refused.
    assert Process.alive?(store)
    assert {:ok, 1} = ContextStore.get(store, :c)
    assert {:ok, {_, ^big}} = ContextStore.get(store, :blob)
    assert {:error, {:storage_error, _}} = ContextStore.increment(store, :c)
    assert {:ok, 1} = ContextStore.get(store, :c)
    assert is_list(ContextStore.list_crdts(store))
    ContextStore.stop(store)
  end

  # Fill the filesystem from outside the store until it refuses a write.
  defp fill!(dir) do
    filler = Path.join(dir, "filler")
    {:ok, f} = File.open(filler, [:write, :raw, :binary])
    chunk = :binary.copy(<<0>>, 64 * 1024)
    fill_loop(f, chunk)
    File.close(f)
    filler
  end

  defp fill_loop(f, chunk) do
    case IO.binwrite(f, chunk) do
      :ok -> fill_loop(f, chunk)
      {:error, _} -> :full
    end
  end

  test "stop reports acknowledged writes it could not write, and logs them", %{dir: dir} do
    {:ok, store} =
      ContextStore.start_link(
        node_id: :full_disk,
        storage_opts: [data_dir: Path.join(dir, "db"), flush_interval: 600_000]
      )

    Process.unlink(store)
    :ok = ContextStore.create(store, :c, :g_counter)
    :ok = ContextStore.create(store, :d, :lww_register)
    {:ok, 1} = ContextStore.increment(store, :c)
    # Larger than what RocksDB preallocated for its log.
    {:ok, _} = ContextStore.set(store, :d, :crypto.strong_rand_bytes(2 * 1024 * 1024))
    fill!(dir)

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        assert {:error, {:unflushed, 2, reason}} = ContextStore.stop(store, :normal, 300)
        assert reason =~ dir
      end)

    assert log =~ "acknowledged writes of 2 ids were lost"
  end

  test "writes resume once space is freed, and nothing acknowledged is lost", %{dir: dir} do
    db = Path.join(dir, "db")
    opts = [node_id: :full_disk, storage_opts: [data_dir: db, flush_interval: 1]]
    {:ok, store} = ContextStore.start_link(opts)
    :ok = ContextStore.create(store, :c, :g_counter)
    :ok = ContextStore.create(store, :blob, :lww_register)
    :ok = ContextStore.sync(store)
    filler = fill!(dir)
    big = :crypto.strong_rand_bytes(256 * 1024)

    # Acknowledged until a flush fails; refused after that.
    acked =
      Enum.reduce_while(1..1_000, 0, fn i, n ->
        case ContextStore.increment(store, :c) do
          {:ok, m} when m == n + 1 ->
            case ContextStore.set(store, :blob, {i, big}) do
              {:ok, _} -> {:cont, n + 1}
              {:error, {:storage_error, _}} -> {:halt, n + 1}
            end

          {:error, {:storage_error, _}} ->
            {:halt, n}
        end
      end)

    assert acked < 1_000, "the full disk never refused a write"
    File.rm!(filler)

    Vsmcp.CRDT.TestHelpers.eventually(fn ->
      match?({:ok, _}, ContextStore.increment(store, :c))
    end)

    {:ok, n} = ContextStore.get(store, :c)
    assert n == acked + 1
    :ok = ContextStore.stop(store)
    {:ok, store} = ContextStore.start_link(opts)
    assert {:ok, ^n} = ContextStore.get(store, :c)
    :ok = ContextStore.stop(store)
  end
end
