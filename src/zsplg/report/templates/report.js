document.querySelectorAll('.gallery-item').forEach(function (item) {
  item.addEventListener('click', function () { item.classList.toggle('zoom'); });
});
