"""protosaga-view: the viewer and segmentation editor for trained ProtoSaGa scenes."""
