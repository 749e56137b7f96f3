defmodule Vsmcp.CRDT.LimitsTest do
  @moduledoc """
  The size limits of the Elixir API, each at the limit and just past it
  (the table "Size limits" of the sync guide lists them all, with where
  the others are tested): `max_value_bytes` for ids, elements and values,
  the nesting depth of a term (256), the length of a sync topic (1 to 255
  bytes) and `stream_crdts/2`'s `page_size` (1 to 100_000).
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.ContextStore.Options

  @max 4_096

  setup do
    dir = tmp_dir!("vsmcp_crdt_limits")
    store = start_store!(storage_opts: [data_dir: dir, max_value_bytes: @max])
    :ok = ContextStore.create(store, :r, :lww_register)
    :ok = ContextStore.create(store, :s, :or_set)
    %{store: store}
  end

  # The encoded size of a binary of `n` bytes, as the store measures it:
  # read from the refusal of an oversized one (the overhead is constant).
  defp overhead(store) do
    big = :binary.copy("x", 2 * @max)
    {:error, {:value_too_large, size, @max}} = ContextStore.set(store, :r, big)
    size - byte_size(big)
  end

  test "values, elements and ids of exactly max_value_bytes pass, one byte more is refused",
       %{store: store} do
    at = :binary.copy("v", @max - overhead(store))
    past = at <> "v"

    assert {:ok, ^at} = ContextStore.set(store, :r, at)
    assert {:error, {:value_too_large, size, @max}} = ContextStore.set(store, :r, past)
    assert size == @max + 1
    assert {:ok, ^at} = ContextStore.get(store, :r)

    assert {:ok, _} = ContextStore.add(store, :s, at)
    assert {:error, {:value_too_large, _, @max}} = ContextStore.add(store, :s, past)
    assert {:ok, true} = ContextStore.member?(store, :s, at)

    assert :ok = ContextStore.create(store, at, :g_counter)
    assert {:error, {:value_too_large, _, @max}} = ContextStore.create(store, past, :g_counter)
    assert {:ok, 1} = ContextStore.increment(store, at, 1)
  end

  test "terms nested 256 levels pass, 257 are refused", %{store: store} do
    at = nested(256)
    past = nested(257)
    assert {:ok, ^at} = ContextStore.set(store, :r, at)
    assert {:error, _} = ContextStore.set(store, :r, past)
    assert {:ok, ^at} = ContextStore.get(store, :r)
    assert :ok = ContextStore.create(store, at, :g_counter)
    assert {:error, _} = ContextStore.create(store, past, :g_counter)
  end

  test "a sync topic of 255 bytes passes, 256 (or none) is refused" do
    assert {:ok, _} = Options.sync_opts(sync_opts: [topic: :binary.copy("t", 255)])

    for topic <- [:binary.copy("t", 256), ""] do
      assert {:error, {:invalid_option, {:sync_opts, :topic}, ^topic}} =
               Options.sync_opts(sync_opts: [topic: topic])
    end
  end

  test "page_size 1 and 100_000 pass, 0 and 100_001 raise", %{store: store} do
    for size <- [1, 100_000] do
      assert [_, _] = store |> ContextStore.stream_crdts(page_size: size) |> Enum.to_list()
    end

    for size <- [0, 100_001] do
      assert_raise ArgumentError, fn -> ContextStore.stream_crdts(store, page_size: size) end
    end
  end
end
