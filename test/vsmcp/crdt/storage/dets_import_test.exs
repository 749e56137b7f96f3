defmodule Vsmcp.CRDT.Storage.DetsImportTest do
  @moduledoc """
  Upgrade in place from the replaced application's DETS file
  (`Vsmcp.CRDT.Storage.DetsImport`): every type, with and without the old
  `:__struct__`, metadata, the original kept byte for byte, a second start
  that imports nothing, damaged files, entries of other shapes, and 1M
  entries.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.Test.LegacyDets
  alias Vsmcp.Test.LegacyDets.Bulk

  @random "[A-Za-z0-9_-]{12}"

  # A DETS file path in a directory of its own (never a context key named
  # :file: ExUnit puts the test module's own path there).
  defp dets_path(prefix \\ "vsmcp_crdt_dets_import"),
    do: Path.join(tmp_dir!(prefix), "crdt_storage.dets")

  defp start!(path, opts \\ []) do
    opts = Keyword.merge([node_id: :importer, storage_opts: [dets_file: path]], opts)
    capture_log(fn -> send(self(), {:store, start_store!(opts)}) end)
    assert_received {:store, store}
    store
  end

  defp now_ms, do: System.system_time(:millisecond)

  # Nothing but the file itself in its directory: no marker, no data
  # directory, no copy, no backup.
  defp assert_untouched(path, hash) do
    assert LegacyDets.hash!(path) == hash
    assert File.ls!(Path.dirname(path)) == [Path.basename(path)]
  end

  describe "each type" do
    for struct? <- [true, false] do
      @tag struct: struct?
      test "counters keep every old node's count (struct: #{struct?})", %{struct: struct?} do
        path = dets_path()
        opts = [struct: struct?]

        LegacyDets.write!(path, [
          {:hits, {:g_counter, LegacyDets.g_counter(%{n1: 5, n2: 3}, opts)}},
          {"balance", {:pn_counter, LegacyDets.pn_counter(%{n1: 10, n2: 1}, %{n2: 4}, opts)}},
          {{:empty, 1}, {:g_counter, LegacyDets.g_counter(%{}, opts)}}
        ])

        store = start!(path)
        assert ContextStore.get(store, :hits) == {:ok, 8}
        assert ContextStore.get(store, "balance") == {:ok, 7}
        assert ContextStore.get(store, {:empty, 1}) == {:ok, 0}
        # This store's own increments add to the old nodes' counts.
        assert ContextStore.increment(store, :hits, 2) == {:ok, 10}
        assert ContextStore.decrement(store, "balance", 10) == {:ok, -3}
      end

      @tag struct: struct?
      test "sets keep the elements with a tag not tombstoned (struct: #{struct?})",
           %{struct: struct?} do
        path = dets_path()

        set =
          LegacyDets.or_set(
            %{
              "live" => [{:n1, 1}],
              "re-added" => [{:n1, 2}, {:n2, -576_460_752_303_423_488}],
              "removed" => [{:n1, 3}, {:n2, 4}],
              {:tuple, [1]} => [{:n1, 5}],
              "no tags" => []
            },
            %{"re-added" => [{:n1, 2}], "removed" => [{:n1, 3}, {:n2, 4}], "gone" => [{:n1, 9}]},
            struct: struct?
          )

        LegacyDets.write!(path, [{:tags, {:or_set, set}}])
        store = start!(path)

        assert ContextStore.get(store, :tags) ==
                 {:ok, MapSet.new(["live", "re-added", {:tuple, [1]}])}

        assert ContextStore.remove(store, :tags, "live") ==
                 {:ok, MapSet.new(["re-added", {:tuple, [1]}])}

        assert {:ok, _} = ContextStore.add(store, :tags, "removed")
        assert ContextStore.member?(store, :tags, "removed") == {:ok, true}
      end

      @tag struct: struct?
      test "registers keep their value, below any later write (struct: #{struct?})",
           %{struct: struct?} do
        path = dets_path()
        # A monotonic timestamp far beyond any wall clock.
        late = [struct: struct?, timestamp: 9_000_000_000_000_000_000]

        LegacyDets.write!(path, [
          {:config, {:lww_register, LegacyDets.lww_register(%{mode: :fast, n: [1, 2]}, late)}},
          {:unset, {:lww_register, LegacyDets.lww_register(nil, struct: struct?)}}
        ])

        store = start!(path)
        assert ContextStore.get(store, :config) == {:ok, %{mode: :fast, n: [1, 2]}}
        assert ContextStore.get(store, :unset) == {:ok, nil}
        assert ContextStore.set(store, :config, :new) == {:ok, :new}
        assert ContextStore.get(store, :config) == {:ok, :new}
      end
    end

    test "metadata: created by this node, at import time or the old created_at, migrated_from" do
      path = dets_path()
      old = 1_600_000_000_000

      LegacyDets.write!(path, [
        {:a, {:g_counter, LegacyDets.g_counter(%{n1: 1})}},
        {:b, {:g_counter, Map.put(LegacyDets.g_counter(%{n1: 1}), :created_at, old)}}
      ])

      before = now_ms()
      store = start!(path)
      later = now_ms()

      assert {:ok, meta} = ContextStore.get_metadata(store, :a)
      assert %{type: :g_counter, created_by: :importer, migrated_from: ^path} = meta
      assert meta.created_at in before..later
      assert meta.updated_at in before..later

      assert {:ok, %{created_at: ^old, migrated_from: ^path}} =
               ContextStore.get_metadata(store, :b)

      # Ids created after the import, or deleted and created again, are not
      # imported.
      :ok = ContextStore.create(store, :c, :g_counter)
      refute Map.has_key?(elem(ContextStore.get_metadata(store, :c), 1), :migrated_from)
      :ok = ContextStore.delete(store, :a)
      :ok = ContextStore.create(store, :a, :g_counter)
      refute Map.has_key?(elem(ContextStore.get_metadata(store, :a), 1), :migrated_from)
    end
  end

  describe "the DETS file" do
    test "is kept as <file>.backup byte for byte, replaced by the marker, and the import logged" do
      path = dets_path()

      LegacyDets.write!(path, [
        {:g, {:g_counter, LegacyDets.g_counter(%{n1: 1})}},
        {:p, {:pn_counter, LegacyDets.pn_counter(%{}, %{n1: 1})}},
        {:s, {:or_set, LegacyDets.or_set(%{1 => [{:n1, 1}]}, %{})}},
        {:r, {:lww_register, LegacyDets.lww_register(1)}}
      ])

      hash = LegacyDets.hash!(path)
      opts = [node_id: :importer, storage_opts: [dets_file: path]]
      log = capture_log([level: :info], fn -> start_store!(opts) end)

      assert log =~ "imported 4 entries (g_counter: 1, pn_counter: 1, or_set: 1, lww_register: 1)"
      assert log =~ "the DETS file is kept as #{path}.backup"
      assert LegacyDets.hash!(path <> ".backup") == hash

      assert File.read!(path) =~
               ~r/\Avsmcp_crdt store marker v1\ndata: \.crdt_storage\.dets\.#{@random}\.rocksdb\n\z/

      assert [data_dir, "crdt_storage.dets", "crdt_storage.dets.backup"] =
               File.ls!(Path.dirname(path)) |> Enum.sort()

      assert data_dir =~ ~r/\A\.crdt_storage\.dets\.#{@random}\.rocksdb\z/
    end

    test "a second start imports nothing again and keeps what changed since" do
      path = dets_path()
      LegacyDets.write!(path, [{:g, {:g_counter, LegacyDets.g_counter(%{n1: 5})}}])
      hash = LegacyDets.hash!(path)

      store = start!(path)
      assert ContextStore.increment(store, :g, 1) == {:ok, 6}
      :ok = ContextStore.stop(store)

      log =
        capture_log([level: :info], fn ->
          {:ok, store} = ContextStore.start_link(storage_opts: [dets_file: path])
          assert ContextStore.get(store, :g) == {:ok, 6}
          assert {:ok, %{migrated_from: ^path}} = ContextStore.get_metadata(store, :g)
          :ok = ContextStore.stop(store)
        end)

      refute log =~ "imported"
      assert LegacyDets.hash!(path <> ".backup") == hash
      assert length(File.ls!(Path.dirname(path))) == 3
    end

    test "two starts of one DETS file at once import it once" do
      path = dets_path()
      LegacyDets.write!(path, [{:g, {:g_counter, LegacyDets.g_counter(%{n1: 5})}}])

      log =
        capture_log([level: :info], fn ->
          starts =
            for _ <- 1..2 do
              Task.async(fn -> ContextStore.start(storage_opts: [dets_file: path]) end)
            end

          stores = for {:ok, store} <- Task.await_many(starts, 30_000), do: store
          # The later open of the directory takes it over (the earlier
          # store answers :closed); the import's data is there.
          reads = Enum.map(stores, &ContextStore.get(&1, :g))
          assert {:ok, 5} in reads
          assert Enum.all?(reads, &(&1 in [{:ok, 5}, {:error, :closed}]))
          Enum.each(stores, &ContextStore.stop/1)
        end)

      assert length(Regex.scan(~r/imported 1 entries/, log)) == 1
      assert length(File.ls!(Path.dirname(path))) == 3
    end

    test "what an interrupted import left is removed, and the next start imports once" do
      path = dets_path()
      dir = Path.dirname(path)
      LegacyDets.write!(path, [{:g, {:g_counter, LegacyDets.g_counter(%{n1: 5})}}])
      # The backup link and a data directory of an import that stopped
      # before the marker was written.
      File.ln!(path, path <> ".backup")
      stale = Path.join(dir, ".crdt_storage.dets.AAAAAAAAAAAA.rocksdb")
      File.mkdir_p!(stale)
      # Its copy, and a file of a neighbour's pattern, which stays.
      stale_copy = Path.join(dir, ".crdt_storage.dets.AAAAAAAAAAAA.import")
      neighbour = Path.join(dir, ".crdt_storage.dets.bak.AAAAAAAAAAAA.import")
      File.cp!(path, stale_copy)
      File.write!(neighbour, "not ours")

      store = start!(path)
      assert ContextStore.get(store, :g) == {:ok, 5}
      refute File.exists?(stale)
      refute File.exists?(stale_copy)
      assert File.read!(neighbour) == "not ours"
      assert length(File.ls!(dir)) == 4
    end

    test "a backup name taken by another file is left alone" do
      path = dets_path()
      LegacyDets.write!(path, [{:g, {:g_counter, LegacyDets.g_counter(%{n1: 5})}}])
      hash = LegacyDets.hash!(path)
      File.write!(path <> ".backup", "someone else's")

      start!(path)
      assert File.read!(path <> ".backup") == "someone else's"
      assert LegacyDets.hash!(path <> ".backup.2") == hash
    end
  end

  describe "a damaged DETS file" do
    setup do
      path = dets_path("vsmcp_crdt_dets_damaged")
      entries = for i <- 1..1_000, do: {i, {:g_counter, LegacyDets.g_counter(%{n1: i})}}
      LegacyDets.write!(path, entries)
      %{dets: path, bytes: File.read!(path)}
    end

    defp start_error(path) do
      ContextStore.start_link(node_id: :importer, storage_opts: [dets_file: path])
    end

    test "truncated: an error naming the file, which stays as it was", ctx do
      %{dets: path, bytes: bytes} = ctx
      File.write!(path, binary_part(bytes, 0, div(byte_size(bytes), 2)))
      hash = LegacyDets.hash!(path)

      assert {:error, {:dets_import_failed, ^path, {:needs_repair, ^path}}} = start_error(path)
      assert_untouched(path, hash)
      # Still refused, still untouched.
      assert {:error, {:dets_import_failed, ^path, _}} = start_error(path)
      assert_untouched(path, hash)
    end

    test "objects garbled: an error naming the file, which stays as it was", ctx do
      %{dets: path, bytes: bytes} = ctx
      size = byte_size(bytes)
      garbled = binary_part(bytes, 0, 20_000) <> :binary.copy(<<0>>, 30_000)
      File.write!(path, garbled <> binary_part(bytes, 50_000, size - 50_000))
      hash = LegacyDets.hash!(path)

      assert {:error, {:dets_import_failed, ^path, reason}} = start_error(path)

      # DETS notices a bad object, or reads fewer objects than it holds.
      assert match?({{:bad_object, _}, ^path}, reason) or
               match?({:damaged, %{objects: 1_000, read: read}} when read < 1_000, reason)

      assert_untouched(path, hash)
    end

    test "header garbled: not a DETS file any more, refused as foreign", ctx do
      %{dets: path, bytes: bytes} = ctx
      File.write!(path, :binary.copy(<<0>>, 64) <> binary_part(bytes, 64, byte_size(bytes) - 64))
      hash = LegacyDets.hash!(path)
      assert {:error, {:foreign_data_file, ^path}} = start_error(path)
      assert_untouched(path, hash)
    end

    test "not closed properly (the old node crashed): a repaired copy is imported", ctx do
      %{dets: path, bytes: bytes} = ctx
      # The header's "closed properly" flag cleared, as a crash leaves it.
      <<head::binary-size(8), 1::32, rest::binary>> = bytes
      File.write!(path, <<head::binary, 0::32, rest::binary>>)
      hash = LegacyDets.hash!(path)

      log =
        capture_log(fn ->
          {:ok, store} = start_error(path)
          assert ContextStore.get(store, 1_000) == {:ok, 1_000}
          assert length(ContextStore.list_crdts(store)) == 1_000
          :ok = ContextStore.stop(store)
        end)

      assert log =~ "was not closed properly"
      assert LegacyDets.hash!(path <> ".backup") == hash
    end
  end

  describe "entries of another shape: nothing imported, the file untouched" do
    for {label, entry, why} <- [
          {"not a CRDT entry", quote(do: {:key, :value}), quote(do: :not_a_crdt_entry)},
          {"a negative count", quote(do: {:key, {:g_counter, LegacyDets.g_counter(%{n1: -1})}}),
           quote(do: {:invalid_count, :n1, -1})},
          {"a count beyond 64 bits",
           quote(do: {:key, {:g_counter, LegacyDets.g_counter(%{n1: 2 ** 64})}}),
           quote(do: {:invalid_count, :n1, 18_446_744_073_709_551_616})},
          {"an unknown type", quote(do: {:key, {:mv_register, %{value: 1}}}),
           quote(do: {:unknown_type, :mv_register})},
          {"missing fields", quote(do: {:key, {:or_set, %{node_id: :n1}}}),
           quote(do: {:missing_fields, :or_set})}
        ] do
      test label do
        path = dets_path()
        # More than one batch before the bad entry.
        good = for i <- 1..2_500, do: {i, {:g_counter, LegacyDets.g_counter(%{n1: i})}}
        LegacyDets.write!(path, good ++ [unquote(entry)])
        hash = LegacyDets.hash!(path)

        assert {:error, {:dets_import_failed, ^path, {:bad_entry, :key, unquote(why)}}} =
                 ContextStore.start_link(storage_opts: [dets_file: path])

        assert_untouched(path, hash)
      end
    end
  end

  describe "entries too large to store" do
    test "are skipped, the rest imported, their ids logged and kept in the backup" do
      path = dets_path()
      big = :binary.copy("x", 100)
      # More than one batch, so skips land in several batches (DETS
      # returns entries in hash order) and mid-batch.
      good = for i <- 1..2_500, do: {i, {:g_counter, LegacyDets.g_counter(%{n1: i})}}

      too_large = [
        {:big_element,
         {:or_set, LegacyDets.or_set(%{big => [{:n1, 1}], "ok" => [{:n1, 2}]}, %{})}},
        {:big_value, {:lww_register, LegacyDets.lww_register(big)}},
        {{:big_id, big}, {:g_counter, LegacyDets.g_counter(%{n1: 1})}}
      ]

      fits = [
        {:small_set, {:or_set, LegacyDets.or_set(%{"ok" => [{:n1, 1}]}, %{})}},
        {:small_value, {:lww_register, LegacyDets.lww_register("ok")}}
      ]

      LegacyDets.write!(path, good ++ too_large ++ fits)
      hash = LegacyDets.hash!(path)
      opts = [node_id: :importer, storage_opts: [dets_file: path, max_value_bytes: 64]]
      log = capture_log([level: :info], fn -> send(self(), {:store, start_store!(opts)}) end)
      assert_received {:store, store}

      # The rest is there.
      assert ContextStore.get(store, 1) == {:ok, 1}
      assert ContextStore.get(store, 2_500) == {:ok, 2_500}
      assert ContextStore.get(store, :small_set) == {:ok, MapSet.new(["ok"])}
      assert ContextStore.get(store, :small_value) == {:ok, "ok"}
      assert length(ContextStore.list_crdts(store)) == 2_502

      # The skipped entries are not, not even in part.
      for {id, _} <- too_large, do: assert(ContextStore.get(store, id) == {:error, :not_found})

      assert log =~ "[warning]"
      assert log =~ "skipped 3 entries of the DETS file #{path} whose id, set element"
      assert log =~ "larger than max_value_bytes (64 bytes)"
      assert log =~ ":big_element"
      assert log =~ ":big_value"
      assert log =~ "{:big_id, \"xxxx"
      assert log =~ "Their data stays in #{path}.backup"

      assert log =~
               "imported 2502 entries (g_counter: 2500, pn_counter: 0, or_set: 1, " <>
                 "lww_register: 1) from the DETS file #{path}"

      assert log =~ "; skipped 3 entries larger than max_value_bytes; the DETS file is kept as"
      assert LegacyDets.hash!(path <> ".backup") == hash

      # A second start imports nothing and skips nothing.
      :ok = ContextStore.stop(store)

      log =
        capture_log([level: :info], fn ->
          {:ok, store} = ContextStore.start_link(storage_opts: [dets_file: path])
          assert ContextStore.get(store, :small_value) == {:ok, "ok"}
          :ok = ContextStore.stop(store)
        end)

      refute log =~ "imported"
      refute log =~ "skipped"
    end

    test "the warning names the first 10 ids of many" do
      path = dets_path()
      big = :binary.copy("x", 100)

      LegacyDets.write!(
        path,
        for(i <- 1..25, do: {i, {:lww_register, LegacyDets.lww_register(big)}})
      )

      log =
        capture_log(fn ->
          store = start_store!(storage_opts: [dets_file: path, max_value_bytes: 64])
          assert ContextStore.list_crdts(store) == []
        end)

      assert [_, ids] = Regex.run(~r/skipped 25 entries .*; the first 10 ids: ([^.]*)\./, log)
      assert ids |> String.split(", ") |> Enum.map(&String.to_integer/1) |> length() == 10
    end
  end

  # Writing the file takes 10-20 s and importing it 14-17 s on the 2-vCPU
  # build machine when quiet; `bench/dets_import.exs` prints the figures.
  @tag timeout: 300_000
  test "1M entries of every type are imported" do
    path = dets_path("vsmcp_crdt_dets_1m")
    n = 1_000_000
    LegacyDets.write!(path, Stream.map(1..n, &Bulk.entry/1), min_no_slots: n)

    store = start!(path)

    for i <- [1, 2, 3, 4, 500_001, n - 1, n] do
      assert ContextStore.get(store, {:id, i}) == Bulk.expected(i)
    end

    assert length(ContextStore.list_crdts(store)) == n
  end
end
