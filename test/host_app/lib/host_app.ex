defmodule HostApp.Application do
  @moduledoc """
  The host application, as a user writes it: Phoenix.PubSub under the name
  the replaced application used, and the default CRDT store.
  """
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      {Phoenix.PubSub, name: Vsmcp.PubSub},
      Vsmcp.CRDT.Supervisor
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: HostApp.Supervisor)
  end
end
