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
end
