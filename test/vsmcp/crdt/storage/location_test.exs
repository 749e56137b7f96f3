defmodule Vsmcp.CRDT.Storage.LocationTest do
  @moduledoc """
  `Vsmcp.CRDT.Storage.Location`: a legacy marker only ever names, recovers or
  removes directories of its own exact pattern `.<basename>.<random>.rocksdb`
  (so neighbouring stores in the same directory never touch each other's
  data), and a store without a location gets a fresh directory under an
  unpredictable name.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.Storage.Location

  # What new markers name: Base.url_encode64 of 9 random bytes.
  @random "[A-Za-z0-9_-]{12}"

  defp marker!(file, data_name) do
    File.write!(file, "vsmcp_crdt store marker v1\ndata: #{data_name}\n")
  end

  describe "neighbouring dets_file markers in one directory" do
    test "a new marker of x/ctx.dets leaves the directory of x/ctx.dets.bak alone" do
      dir = tmp_dir!("vsmcp_crdt_neighbours")
      ctx = Path.join(dir, "ctx.dets")
      bak = Path.join(dir, "ctx.dets.bak")

      assert {:ok, %{path: bak_data}} = Location.resolve(dets_file: bak)
      assert Path.basename(bak_data) =~ ~r/\A\.ctx\.dets\.bak\.#{@random}\.rocksdb\z/
      File.mkdir_p!(bak_data)
      File.write!(Path.join(bak_data, "CURRENT"), "keep me")

      assert {:ok, %{path: first}} = Location.resolve(dets_file: ctx)
      File.mkdir_p!(first)
      File.rm!(ctx)
      assert {:ok, %{path: second}} = Location.resolve(dets_file: ctx)
      assert second != first

      # Its own stale directory is gone; the neighbour's is intact.
      refute File.exists?(first)
      assert File.read!(Path.join(bak_data, "CURRENT")) == "keep me"
      assert {:ok, %{path: ^bak_data}} = Location.resolve(dets_file: bak)
    end

    test "only directories of the exact own pattern are removed as stale" do
      dir = tmp_dir!("vsmcp_crdt_stale")
      ctx = Path.join(dir, "ctx.dets")

      kept = [
        ".ctx.dets.bak.AAAAAAAAAAAA.rocksdb",
        ".ctx.dets.bak.rocksdb",
        ".ctx.dets.short.rocksdb",
        ".ctx.dets.AAAAAAAAAAAAA.rocksdb",
        ".ctx.dets.AAAAAAAAAAA.rocksdb",
        ".ctx.dets.AAAAAA.AAAAA.rocksdb",
        ".ctx.dets.AAAAAAAAAAAA.rocksdb.old",
        "ctx.dets.AAAAAAAAAAAA.rocksdb",
        ".other.AAAAAAAAAAAA.rocksdb"
      ]

      stale = [".ctx.dets.AAAAAAAAAAAA.rocksdb", ".ctx.dets.a-b_c0123456.rocksdb"]

      for name <- kept ++ stale, do: File.mkdir_p!(Path.join(dir, name))

      assert {:ok, %{path: path}} = Location.resolve(dets_file: ctx)
      assert Path.basename(path) =~ ~r/\A\.ctx\.dets\.#{@random}\.rocksdb\z/

      for name <- kept, do: assert(File.dir?(Path.join(dir, name)), "#{name} was removed")
      for name <- stale, do: refute(File.exists?(Path.join(dir, name)), "#{name} was kept")
    end

    test "a marker naming anything but its own exact pattern is foreign" do
      dir = tmp_dir!("vsmcp_crdt_marker_names")
      ctx = Path.join(dir, "ctx.dets")

      for name <- [
            ".ctx.dets.bak.AAAAAAAAAAAA.rocksdb",
            ".ctx.dets.AAAAAAAAAAA.rocksdb",
            ".ctx.dets.AAAAAAAAAAAAA.rocksdb",
            ".ctx.dets.AAAAAA/AAAAA.rocksdb",
            ".ctx.dets.AAAAAA.AAAAA.rocksdb",
            ".ctx.dets.AAAAAAAAAAA=.rocksdb",
            ".ctx.dets..rocksdb"
          ] do
        marker!(ctx, name)
        assert {:error, {:foreign_data_file, _}} = Location.resolve(dets_file: ctx), name
      end

      marker!(ctx, ".ctx.dets.a-b_c0123456.rocksdb")

      assert {:ok, %{path: path}} = Location.resolve(dets_file: ctx)
      assert path == Path.join(Path.expand(dir), ".ctx.dets.a-b_c0123456.rocksdb")
    end

    test "through real stores: restarting x/ctx.dets on a new marker keeps x/ctx.dets.bak's data" do
      dir = tmp_dir!("vsmcp_crdt_neighbour_stores")
      bak_opts = [node_id: :bak, storage_opts: [dets_file: Path.join(dir, "ctx.dets.bak")]]
      ctx_file = Path.join(dir, "ctx.dets")
      ctx_opts = [node_id: :ctx, storage_opts: [dets_file: ctx_file]]

      bak = start_store!(bak_opts)
      :ok = ContextStore.create(bak, :counter, :g_counter)
      for _ <- 1..7, do: {:ok, _} = ContextStore.increment(bak, :counter)
      :ok = ContextStore.sync(bak)
      stop_and_wait(bak)

      ctx = start_store!(ctx_opts)
      :ok = ContextStore.create(ctx, :other, :g_counter)
      stop_and_wait(ctx)

      # A fresh marker: the next ctx.dets store begins empty and removes
      # the stale directories of its own earlier markers.
      File.rm!(ctx_file)
      ctx = start_store!(ctx_opts)
      assert ContextStore.list_crdts(ctx) == []
      stop_and_wait(ctx)

      bak = start_store!(bak_opts)
      assert {:ok, 7} = ContextStore.get(bak, :counter)
    end
  end

  describe "a store without a location" do
    test "gets a fresh private directory under a random name" do
      paths =
        for _ <- 1..5 do
          assert {:ok, %{path: path, ephemeral: true}} = Location.resolve([])
          on_exit(fn -> File.rm_rf(path) end)
          assert Path.dirname(path) == System.tmp_dir!()
          # Nothing derived from the OS process or a counter.
          assert Path.basename(path) =~ ~r/\Avsmcp_crdt-[A-Za-z0-9_-]{16}\z/
          refute Path.basename(path) =~ System.pid()
          assert File.ls!(path) == []
          assert %{type: :directory, access: :read_write} = File.stat!(path)
          assert Bitwise.band(File.stat!(path).mode, 0o777) == 0o700
          path
        end

      assert length(Enum.uniq(paths)) == 5
    end

    test "a store started without a location uses such a directory" do
      store = start_store!([])
      assert Path.basename(ContextStore.stats(store).path) =~ ~r/\Avsmcp_crdt-[A-Za-z0-9_-]{16}\z/
    end
  end
end
