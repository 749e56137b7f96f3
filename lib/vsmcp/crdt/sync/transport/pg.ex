defmodule Vsmcp.CRDT.Sync.Transport.PG do
  @moduledoc """
  `Vsmcp.CRDT.Sync.Transport` over OTP's `:pg` process groups.

  Uses its own scope (default `#{inspect(Vsmcp.CRDT.Sync.PG)}`, started on
  every node by this library's application; another one can be given as
  `scope:`), so sync groups never mix with the application's own groups.
  Per topic there are two kinds of groups, keyed by terms made of the
  caller's strings (no atoms are created):

    * `{:topic, topic}` - every member; `broadcast/3` sends to all of them
      but the caller;
    * `{:direct, topic, key}` - the member that joined with `key`;
      `send_to/4` sends to it.

  Messages go with plain `send/2` to the member pids, over whatever
  distribution connections exist: `:pg` learns about members on the nodes
  this node is connected to and forgets them at `nodedown`; it never
  connects nodes itself.

  ## Cost

  `:pg.get_members/2` is an ETS read on the local node; a broadcast is one
  `send/2` per member (the payload is copied once per remote node message,
  so large payloads to many members cost bandwidth linearly).
  """

  @behaviour Vsmcp.CRDT.Sync.Transport

  @default_scope Vsmcp.CRDT.Sync.PG

  @doc """
  The scope started by this library's application on every node.

      iex> Vsmcp.CRDT.Sync.Transport.PG.default_scope()
      Vsmcp.CRDT.Sync.PG
  """
  @spec default_scope() :: atom()
  def default_scope, do: @default_scope

  @doc """
  Options: `scope:` (default `default_scope/0`). Returns
  `{:error, :pg_scope_not_running}` when no process is registered under the
  scope's name.

      iex> Vsmcp.CRDT.Sync.Transport.PG.start([])
      {:ok, %{scope: Vsmcp.CRDT.Sync.PG}}
      iex> Vsmcp.CRDT.Sync.Transport.PG.start(scope: :doc_no_such_scope)
      {:error, :pg_scope_not_running}
  """
  @impl true
  @spec start(keyword()) :: {:ok, %{scope: atom()}} | {:error, :pg_scope_not_running}
  def start(opts) when is_list(opts) do
    scope = Keyword.get(opts, :scope, @default_scope)

    if is_atom(scope) and is_pid(Process.whereis(scope)),
      do: {:ok, %{scope: scope}},
      else: {:error, :pg_scope_not_running}
  end

  @impl true
  def join(%{scope: scope}, topic, key) when is_binary(topic) and is_binary(key) do
    join_once(scope, {:topic, topic})
    join_once(scope, {:direct, topic, key})
  end

  @impl true
  def broadcast(state, topic, payload), do: broadcast_from(state, self(), topic, payload)

  @impl true
  def broadcast_from(%{scope: scope}, from, topic, payload)
      when is_pid(from) and is_binary(topic) and is_binary(payload) do
    message = {:vsmcp_crdt_sync, topic, payload}

    for pid <- :pg.get_members(scope, {:topic, topic}), pid != from do
      send(pid, message)
    end

    :ok
  end

  @impl true
  def send_to(%{scope: scope}, topic, key, payload)
      when is_binary(topic) and is_binary(key) and is_binary(payload) do
    message = {:vsmcp_crdt_sync, topic, payload}

    for pid <- :pg.get_members(scope, {:direct, topic, key}) do
      send(pid, message)
    end

    :ok
  end

  @impl true
  def leave(%{scope: scope}, topic, key) when is_binary(topic) and is_binary(key) do
    # :pg.leave/3 returns :not_joined for a group the caller is not in.
    _ = :pg.leave(scope, {:topic, topic}, self())
    _ = :pg.leave(scope, {:direct, topic, key}, self())
    :ok
  end

  # :pg counts a process once per join, and would deliver once per join.
  # The join is a call to the scope process: if the scope goes down
  # meanwhile (junk makes OTP's :pg crash), the caller, a sync peer
  # re-joining at its heartbeat, must not go down with it; the next
  # heartbeat joins the restarted scope.
  defp join_once(scope, group) do
    if self() in :pg.get_local_members(scope, group) do
      :ok
    else
      try do
        :pg.join(scope, group, self())
      catch
        :exit, _ -> :ok
      end
    end
  end
end
